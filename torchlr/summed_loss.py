"""A data set's squared loss, from float64 predictions where float32's are too coarse."""

from __future__ import annotations

import torch

from torchlr.scratch import linreg, squared_loss

# A float32 prediction X w + b is rounded to about 6e-8 of its size, at random, so the mean
# loss L of n rows, from residuals y_hat - y, misses by about c * sqrt(M * L / n), M the
# targets' mean square (b² added, for targets far from 0 whose offset b carries). Over 300
# random tables (10 to 100k rows, offsets to 1e4, noise 1e-3 to 1) c was 2e-8 at the median
# and 2e-7 at the 99th percentile, beside float32's own rounding of L (6e-8 of it). The
# rows are summed again from float64 predictions where that error can reach:
# - the digits a loss is printed with (torchlr.cli: six decimals, seven significant digits
#   at most), that is PRINTED_ABS, or PRINTED_REL of L. On 2,000 rows of targets near
#   12,000 (standardized columns near 1e4), a loss of 0.507847 was 0.507835, and the same
#   float32 sum in another order gave yet another 5th digit. It cannot reach them where
#   L < PRINTED_ABS² n / (ROUNDING_ERROR² M) (its error stays under half a printed
#   decimal) or L > ROUNDING_ERROR² M / (PRINTED_REL² n), and never where M < 1.25 n: the
#   chapter's data (M near 50 over 1,000 rows) and the benchmark's 1Mx100 are left alone;
# - three digits of a loss far below the targets' size. Its relative error,
#   c * sqrt(M / (L n)), reaches THREE_DIGITS (half a unit of the third) below
#   (ROUNDING_ERROR / THREE_DIGITS)² M / n: on 200 rows of targets near 5, a loss of 2e-10
#   of M was 1.6e-3 off. And below ROUNDING_SHARE of M whatever n, as the squares of the
#   predictions' own rounding (about 1e-15 of M a row) stop averaging out: on those targets
#   fitted to 1e-11, the float32 loss read 2.79e-11 where float64 arithmetic on the same
#   float32 data and parameters gives 2.72e-11, and on a closer fit 7.9e-14 for 1.14e-13.
# Terms of X w that cancel each other (columns near 1e6 weighted 1.3 and -1.3) are not seen
# by either test: there float32 keeps fewer digits than it says.
ROUNDING_ERROR = 2e-7
PRINTED_ABS = 5e-7
PRINTED_REL = 1e-7
ROUNDING_SHARE = 1e-10
THREE_DIGITS = 5e-4
# Bytes of X's float64 copy per piece: small beside the data, and few pieces (few kernel
# launches on a GPU) for narrow data: 2 columns take a million rows a piece.
FLOAT64_BYTES = 1 << 24


def too_coarse(mean: torch.Tensor, y: torch.Tensor, b: torch.Tensor,
               loss_scale: float = 1.0) -> torch.Tensor:
    """Whether float32's predictions of y are too coarse for a mean loss of them: 1.0 or
    0.0, a float32 0-d tensor on y's device (not read: a caller brings it over with its
    loss). Never for a NaN or inf mean, nor for no rows. loss_scale: what the loss is
    multiplied by when it is reported (a scaled target's variance): the printed digits
    are that product's."""
    wide = torch.float32 if y.device.type == "mps" else torch.float64  # MPS has no float64
    scale = y.square().mean(dtype=wide) + b.to(wide).square().sum()  # M
    loss, n = mean.to(wide), len(y)
    printed = ((loss > (PRINTED_ABS / loss_scale / ROUNDING_ERROR) ** 2 * n / scale)
               & (loss < (ROUNDING_ERROR / PRINTED_REL) ** 2 * scale / n))
    share = max(ROUNDING_SHARE, (ROUNDING_ERROR / THREE_DIGITS) ** 2 / max(n, 1))
    return (printed | (loss < share * scale)).float()


@torch.no_grad()
def loss_sum(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
             loss_scale: float = 1.0) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) summed over the rows, as a float64 0-d tensor.

    Taken from float32 predictions, and again from float64 ones where the mean is
    too_coarse. X (n, d), y (n, 1) or (n,), w (d, 1) and b (1,), on one device.
    """
    total = squared_loss(linreg(X, w, b), y).sum(dtype=torch.float64)
    if bool(too_coarse(total / len(y), y, b, loss_scale)):  # no rows: a NaN mean, never too coarse
        return float64_sum(X, y, w, b)
    return total


@torch.no_grad()
def loss_mean(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
              loss_scale: float = 1.0) -> torch.Tensor:
    """squared_loss of linreg(X, w, b) averaged over the rows, as a float32 0-d tensor.

    The chapter's float32 mean, to the bit, as a loop over the same tensors takes it; from
    float64 predictions where it is too_coarse (one host read decides).
    """
    return refined(*mean_and_coarse(linreg(X, w, b), y, b, loss_scale), X, y, w, b)


def mean_and_coarse(y_hat: torch.Tensor, y: torch.Tensor, b: torch.Tensor,
                    loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 mean squared_loss of predictions y_hat, and whether it is too_coarse:
    neither read, so a caller brings both over in the copy it makes anyway, then calls
    refined."""
    mean = squared_loss(y_hat, y).mean()
    return mean, too_coarse(mean, y, b, loss_scale)


def refined(mean: torch.Tensor, coarse: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
            w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean, a float32 loss of (w, b) on (X, y), or where coarse (too_coarse's flag) is
    set, the mean loss from float64 predictions, in mean's dtype and on its device."""
    if not bool(coarse):
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
