"""A data set's squared loss, from float64 predictions where float32's are too coarse."""

from __future__ import annotations

import torch

from torchlr.scratch import linreg, squared_loss

# A float32 prediction X w + b is rounded to about 6e-8 of its size, so a residual y_hat - y
# far below the targets' size keeps few correct digits: on targets near 5 fitted to 1e-11,
# the float32 loss read 2.79e-11 where float64 arithmetic on the same float32 data and
# parameters gives 2.72e-11, and on a closer fit 7.9e-14 for 1.14e-13. Measured on 100k
# rows of 5 columns, the float32 loss's relative error is about 1e-15 over its share of the
# targets' mean square (b² added, for targets far from 0 whose offset b carries): 8e-7 at a
# share of 1e-8, 1.5e-5 at 1e-10, 3e-4 at 1e-12. Below this share the rows are summed again
# from float64 predictions, which keeps three digits with room to spare, and leaves noisy
# data alone: the chapter's loss is 1.5e-6 of its targets' mean square, a target near 1000
# with noise 0.1 5e-9. Terms of X w that cancel each other (columns near 1e6 weighted 1.3
# and -1.3) are not seen by this test: there float32 keeps fewer digits than it says.
ROUNDING_SHARE = 1e-10
# Bytes of X's float64 copy per piece: small beside the data, and few pieces (few kernel
# launches on a GPU) for narrow data: 2 columns take a million rows a piece.
FLOAT64_BYTES = 1 << 24


def coarse_limit(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean loss below which float32's predictions of y are too coarse for it, as a
    float32 0-d tensor on y's device (not read: a caller brings it over with its loss)."""
    wide = torch.float32 if y.device.type == "mps" else torch.float64  # MPS has no float64
    scale = y.square().mean(dtype=wide) + b.to(wide).square().sum()
    return (ROUNDING_SHARE * scale).float()


@torch.no_grad()
def loss_sum(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) summed over the rows, as a float64 0-d tensor.

    Taken from float32 predictions, and again from float64 ones where the mean is below
    coarse_limit. X (n, d), y (n, 1) or (n,), w (d, 1) and b (1,), on one device.
    """
    total = squared_loss(linreg(X, w, b), y).sum(dtype=torch.float64)
    if bool(total < len(y) * coarse_limit(y, b).double()):  # never for NaN, inf or no rows
        return float64_sum(X, y, w, b)
    return total


@torch.no_grad()
def loss_mean(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              b: torch.Tensor) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) averaged over the rows, as a float32 0-d tensor.

    The chapter's float32 mean, to the bit, as a loop over the same tensors takes it; from
    float64 predictions where it is below coarse_limit (one host read decides).
    """
    return refined(*mean_and_limit(linreg(X, w, b), y, b), X, y, w, b)


def mean_and_limit(y_hat: torch.Tensor, y: torch.Tensor,
                   b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 mean squared_loss of predictions y_hat, and its coarse_limit: neither
    read, so a caller brings both over in the copy it makes anyway, then calls refined."""
    return squared_loss(y_hat, y).mean(), coarse_limit(y, b)


def refined(mean: torch.Tensor, limit: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
            w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean, a float32 loss of (w, b) on (X, y), or where it is below limit, the mean loss
    from float64 predictions, in mean's dtype and on its device."""
    if not bool(mean < limit):
        return mean
    return (float64_sum(X, y, w, b) / len(y)).to(mean.dtype).to(mean.device)


def float64_sum(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
    """loss_sum's float64 arithmetic, in pieces of FLOAT64_BYTES of float64 rows (on the CPU
    for data on MPS, which has no float64)."""
    device = torch.device("cpu") if X.device.type == "mps" else X.device
    w64, b64 = w.to(device, torch.float64), b.to(device, torch.float64)
    rows = max(1, FLOAT64_BYTES // (8 * X.shape[1]))
    pieces = [squared_loss(linreg(X[i:i + rows].to(device, torch.float64), w64, b64),
                           y[i:i + rows].to(device, torch.float64)).sum()
              for i in range(0, len(X), rows)]
    return torch.stack(pieces).sum()
