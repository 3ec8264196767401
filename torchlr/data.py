"""The chapter's data: a synthetic linear data set and a minibatch iterator."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Optional

import torch

from torchlr.validation import check_positive_int


def fresh_generator() -> torch.Generator:
    """A CPU generator seeded from OS entropy: random, and independent of torch's global RNG."""
    gen = torch.Generator()
    gen.seed()
    return gen


def synthetic_data(
    w: torch.Tensor | Sequence[float],
    b: float,
    num_examples: int,
    noise: float = 0.01,
    *,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw X ~ N(0, 1) of shape (n, d) and y = X w + b + N(0, noise^2) of shape (n, 1)."""
    num_examples = check_positive_int("num_examples", num_examples)
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1).cpu()
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    gen = generator if generator is not None else fresh_generator()
    X = torch.randn(num_examples, len(w), generator=gen, device=gen.device).cpu()  # (n, d)
    y = X @ w + b  # (n,)
    y += noise * torch.randn(y.shape, generator=gen, device=gen.device).cpu()
    return X, y.reshape(-1, 1)


def batch_order(
    num_examples: int, *, shuffle: bool = True, generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
) -> Optional[torch.Tensor]:
    """One epoch's example order on `device`, drawn from `generator` (None when not shuffling)."""
    if not shuffle:
        return None
    gen = generator if generator is not None else fresh_generator()
    # Drawn where the generator lives, then moved: the order depends on the seed, not the device.
    order = torch.randperm(num_examples, generator=gen, device=gen.device)
    return order.to(device) if device is not None else order


def data_iter(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    shuffle: bool = True,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    reuse_buffer: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (X, y) minibatches covering each example once, in a fresh random order per call.

    With reuse_buffer=True every block of rows is gathered into the same buffer, so a batch
    is valid only until the next one is drawn: for a loop that is done with each batch
    before it asks for the next, as a training step is. It saves allocating, and on Linux
    often page-faulting in, a fresh ~1 MiB block every few steps.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if len(features) != len(labels):
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"features has {len(features)}, labels has {len(labels)}"
        )
    # Checked here, not lazily: a generator function would defer errors to the first batch.
    order = batch_order(len(features), shuffle=shuffle, generator=generator,
                        device=features.device)
    return _batches(batch_size, features, labels, order, drop_last, reuse_buffer)


# Rows gathered at once: small batches come out as views of one gather (fewer kernel calls
# per step), while a block this size never copies more than ~1 MiB of the data set.
BLOCK_BYTES = 1 << 20


def _batches(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    order: Optional[torch.Tensor],
    drop_last: bool,
    reuse_buffer: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(features)
    stop = n - n % batch_size if drop_last else n
    if order is None:
        yield from zip(features[:stop].split(batch_size), labels[:stop].split(batch_size))
        return
    row_bytes = (features[:1].nbytes + labels[:1].nbytes) or 1
    # A whole number of batches per block, so block edges are batch edges.
    block = max(1, BLOCK_BYTES // (batch_size * row_bytes)) * batch_size
    X_buf = y_buf = None
    if reuse_buffer:
        rows = min(block, stop)
        X_buf = features.new_empty((rows, *features.shape[1:]))
        y_buf = labels.new_empty((rows, *labels.shape[1:]))
    for block_start in range(0, stop, block):
        idx = order[block_start:min(block_start + block, stop)]
        if X_buf is None or y_buf is None:
            X_block, y_block = features.index_select(0, idx), labels.index_select(0, idx)
        else:  # leading rows of one buffer: contiguous, and overwritten by the next block
            X_block = torch.index_select(features, 0, idx, out=X_buf[:len(idx)])
            y_block = torch.index_select(labels, 0, idx, out=y_buf[:len(idx)])
        # split makes all of the block's batch views in one call, not one slice per step.
        yield from zip(X_block.split(batch_size), y_block.split(batch_size))
