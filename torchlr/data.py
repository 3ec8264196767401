"""The chapter's data: a synthetic linear data set and a minibatch iterator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch

from torchlr import threads
from torchlr.validation import (
    check_bool,
    check_choice,
    check_finite_number,
    check_generator,
    check_positive_int,
    numbers_tensor,
    unreadable,
)


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
    """Draw X ~ N(0, 1) of shape (n, d) and y = X w + b + N(0, noise^2) of shape (n, 1),
    both float32 on the CPU, from generator (a fresh, OS-seeded one when None)."""
    num_examples = check_positive_int("num_examples", num_examples)
    given = w
    w = weights("w", w).cpu()
    if not bool(torch.isfinite(w).all()):
        # 1e39 is finite as given, and inf once float32: say which.
        wide = numbers_tensor("w", given, torch.float64)
        beyond = bool(torch.isfinite(wide).all())
        raise ValueError(f"w must be finite{' in float32 (about ±3.4e38)' if beyond else ''}, "
                         f"got {wide.reshape(-1).tolist()}")
    noise = check_finite_number("noise", noise, minimum=0)
    b = check_finite_number("b", b)
    check_generator(generator)
    gen = generator if generator is not None else fresh_generator()
    # float32 whatever torch's default dtype: the data both implementations train on.
    X = torch.randn(num_examples, len(w), generator=gen, device=gen.device,
                    dtype=torch.float32).cpu()  # (n, d)
    y = X @ w + b  # (n,)
    y += noise * torch.randn(y.shape, generator=gen, device=gen.device, dtype=torch.float32).cpu()
    if not bool(torch.isfinite(y).all()):  # data no fit could train on, made here silently
        raise ValueError(f"the labels X w + b + noise pass float32's range (about ±3.4e38) "
                         f"with w={w.tolist()}, b={b!r}, noise={noise!r}: make them smaller")
    return X, y.reshape(-1, 1)


def weights(name: str, w: Any) -> torch.Tensor:
    """w, one weight per feature, as float32 (d,): from a sequence, array or tensor of shape
    (d,) or (d, 1); anything else is refused naming it."""
    w = numbers_tensor(name, w)
    if not (w.dim() == 1 or (w.dim() == 2 and w.shape[1] == 1)) or w.numel() == 0:
        raise ValueError(f"{name} must hold one weight per feature, shape (d,) or (d, 1) with "
                         f"d >= 1, got shape {tuple(w.shape)}")
    return w.reshape(-1)


# How an epoch's order is drawn. "randperm": torch.randperm on the seeded generator (a CPU
# one in a fit), then moved to the device. "hashed": the row numbers sorted by a keyed hash
# of each, the keys drawn from the generator; exact integer arithmetic, so the same order on
# every device, and on a GPU it is computed there: no CPU permutation and no host-to-device
# copy per epoch (at 10M rows randperm alone took 0.24-0.31 s beside a 4 GB read of 1.4 ms).
PERMUTATIONS = ("randperm", "hashed")
# A "hashed" order of fewer rows is computed on the CPU and copied: its few dozen kernels
# cost more to launch on a GPU than they take on the CPU. The order is the same either way.
HASHED_ON_DEVICE_ROWS = 1 << 16
# The hash is a bijection of 32-bit numbers, so the keys of up to 2^32 rows never tie.
HASHED_MAX_ROWS = 1 << 32
_MASK32 = 0xFFFFFFFF
# Odd, so multiplying by one is a bijection mod 2^32, and below 2^31, so a 32-bit number
# times one fits in an int64: no overflow on any device.
_MULTIPLIERS = (0x7FEB352D, 0x2C1B3C6D)
_ROUNDS = 3


def batch_order(
    num_examples: int, *, shuffle: bool = True, generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None, permutation: str = "randperm",
) -> Optional[torch.Tensor]:
    """One epoch's example order on `device`, drawn from `generator` (None when not shuffling).

    permutation is "randperm" or "hashed" (see PERMUTATIONS); either depends on the
    generator's state, never on the device.
    """
    if not shuffle:
        return None
    check_choice("permutation", permutation, PERMUTATIONS)
    gen = generator if generator is not None else fresh_generator()
    if permutation == "hashed":
        return hashed_order(num_examples, gen, device)
    # Drawn where the generator lives, then moved: the order depends on the seed, not the device.
    order = torch.randperm(num_examples, generator=gen, device=gen.device)
    return order.to(device) if device is not None else order


def hashed_order(num_examples: int, generator: torch.Generator,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A permutation of range(num_examples): the row numbers sorted by keyed-hash keys.

    The keys are _ROUNDS rounds of (xor a 32-bit seed drawn from generator, then _mix) on
    each row number: a bijection of 32-bit numbers, so no two rows share a key and the
    sort has one answer. Integer ops that never overflow, so every device computes the same
    order; on CUDA, from HASHED_ON_DEVICE_ROWS rows, it is computed there.
    """
    if num_examples > HASHED_MAX_ROWS:
        raise ValueError(f"permutation='hashed' orders at most 2^32 rows, got {num_examples}; "
                         f"use permutation='randperm'")
    seeds = torch.randint(0, _MASK32 + 1, (_ROUNDS,), generator=generator,
                          device=generator.device).tolist()
    target = torch.device(device) if device is not None else generator.device
    here = target if target.type == "cuda" and num_examples >= HASHED_ON_DEVICE_ROWS \
        else torch.device("cpu")
    keys = torch.arange(num_examples, dtype=torch.int64, device=here)
    for seed in seeds:
        keys = _mix(keys.bitwise_xor_(seed))
    # Shifted into int32, the sort's keys are half as wide: a faster radix sort on a GPU.
    order = torch.argsort(keys.sub_(1 << 31).to(torch.int32), stable=True)
    return order.to(target)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit numbers held in int64 (xor-shifts and odd multiplies mod 2^32),
    in place: each output bit depends on every input bit."""
    for multiplier in _MULTIPLIERS:
        x.bitwise_xor_(x >> 16)
        x.mul_(multiplier).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


# Data on these devices, of at least AHEAD_MIN_ROWS rows, get their "randperm" orders drawn
# an epoch ahead (OrdersAhead). On the CPU the fit's own threads use the cores; on a GPU the
# host mostly waits, and a 10M-row randperm (0.2-0.3 s) outlasts a graphed epoch's steps.
AHEAD_DEVICES = ("cuda",)
AHEAD_MIN_ROWS = 1 << 16


class OrdersAhead:
    """batch_order's "randperm" orders, each drawn on a thread while the epoch before it
    trains.

    The thread draws from a copy of the generator; take() hands the order over and moves
    the generator to the state that draw left. So each order, and the generator's state
    between epochs (what a checkpoint keeps), are those of drawing every order in turn.
    Nothing else may draw from the generator between a draw_next() and its take(): a fit
    uses it only for the orders once training starts.
    """

    def __init__(self, num_examples: int, generator: torch.Generator) -> None:
        self.num_examples, self.generator = num_examples, generator
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchlr-order")
        self._next: Optional[Any] = None  # a Future of (order, generator state after it)

    def take(self, device: torch.device | str | None = None,
             then_draw: bool = False) -> torch.Tensor:
        """This epoch's order on device: the one drawn ahead, else drawn now. With
        then_draw, the next one's draw starts, to run while this epoch trains."""
        if self._next is None:
            self.draw_next()
        assert self._next is not None
        order, state = self._next.result()
        self._next = None
        self.generator.set_state(state)
        if then_draw:
            self.draw_next()
        return order.to(device) if device is not None else order

    def draw_next(self) -> None:
        """Start drawing the order that take() hands over next."""
        copy = torch.Generator(device=self.generator.device)
        copy.set_state(self.generator.get_state())

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            # As batch_order draws it; randperm runs without the GIL, beside the steps.
            order = torch.randperm(self.num_examples, generator=copy, device=copy.device)
            return order, copy.get_state()

        self._next = self._pool.submit(draw)

    def close(self) -> None:
        """Let the thread go once a draw in flight ends (one left unused is dropped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def orders_ahead(num_examples: int, generator: torch.Generator, device: torch.device,
                 permutation: str) -> Optional[OrdersAhead]:
    """An OrdersAhead where drawing ahead pays (see AHEAD_DEVICES), else None."""
    if (permutation != "randperm" or device.type not in AHEAD_DEVICES
            or num_examples < AHEAD_MIN_ROWS):
        return None
    return OrdersAhead(num_examples, generator)


def data_iter(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    shuffle: bool = True,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    reuse_buffer: bool = False,
    prefetch: bool = False,
    permutation: str = "randperm",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (X, y) minibatches covering each example once, in a fresh random order per call.

    permutation says how the order is drawn: "randperm" or "hashed" (see PERMUTATIONS).

    Features are gathered a block of rows at a time; the labels, a small part of each row,
    once per call in the epoch's order, and each batch takes a view of them. With
    reuse_buffer=True every block is gathered into the same buffer (two with prefetch), so a
    batch is valid only until the next one is drawn: for a loop that is done with each batch
    before it asks for the next, as a training step is. It saves allocating, and on Linux
    often page-faulting in, a fresh block every few steps.

    With prefetch=True, on the CPU with more than one core to run on, a second thread gathers
    the next block of rows while the caller works on this one. The batches are the same;
    only who copies them changes. Elsewhere it is ignored: CUDA gathers are already async.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    for name, value in (("features", features), ("labels", labels)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; "
                            f"torch.as_tensor converts a numpy array")
        if value.dim() == 0:
            raise ValueError(f"{name} must have one row per example, got a 0-d tensor")
        why = unreadable(value)  # a sparse tensor failed inside torch at the first batch
        if why:
            raise TypeError(f"{name} is {why}")
        if reuse_buffer is True and value.requires_grad:
            raise ValueError(f"reuse_buffer=True gathers {name} into a buffer, which autograd "
                             f"cannot track: pass {name}.detach(), or reuse_buffer=False")
    check_generator(generator)
    check_choice("permutation", permutation, PERMUTATIONS)  # also when shuffle=False
    # Truthy is not enough: drop_last="no" would drop, shuffle="no" would shuffle.
    for name, flag in (("shuffle", shuffle), ("drop_last", drop_last),
                       ("reuse_buffer", reuse_buffer), ("prefetch", prefetch)):
        check_bool(name, flag)
    if len(features) != len(labels):
        raise ValueError(
            "Found input variables with inconsistent numbers of samples: "
            f"features has {len(features)}, labels has {len(labels)}"
        )
    # Checked here, not lazily: a generator function would defer errors to the first batch.
    order = batch_order(len(features), shuffle=shuffle, generator=generator,
                        device=features.device, permutation=permutation)
    return batches_in_order(batch_size, features, labels, order, drop_last, reuse_buffer,
                            prefetch)


# Rows gathered at once: small batches come out as views of one gather (fewer kernel calls
# per step), while a block this size never copies more than ~1 MiB of the data set.
BLOCK_BYTES = 1 << 20
# The block when a second thread gathers ahead. Handing a block between threads costs tens
# of µs, so bigger blocks pay it less often, and the block is read from the shared cache
# anyway (written on the other core). Whole 1Mx100 fits, batch 1024, min / median of 10:
# no prefetch 0.46 / 0.64 s; 1 MiB 0.37 / 0.49, 2 MiB 0.28 / 0.42, 4 MiB 0.26 / 0.39,
# 8 MiB 0.25 / 0.41, 16 MiB 0.27 / 0.47.
PREFETCH_BLOCK_BYTES = 4 << 20
# Bytes to which torch's CPU allocator aligns every tensor it makes (c10's gAlignment).
ALIGNMENT = 64


def batches_in_order(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    order: Optional[torch.Tensor],
    drop_last: bool,
    reuse_buffer: bool = False,
    prefetch: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """data_iter's batches once the epoch's order (None: unshuffled) is drawn, unchecked:
    for a fit that checked its data and drew the order itself."""
    prefetch = prefetch and order is not None and threads.spare_core(features.device)
    return _batches(batch_size, features, labels, order, drop_last, reuse_buffer, prefetch)


def _batches(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    order: Optional[torch.Tensor],
    drop_last: bool,
    reuse_buffer: bool,
    prefetch: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(features)
    stop = n - n % batch_size if drop_last else n
    if order is None:
        if stop > 0:  # split of no rows still gives one empty piece
            yield from zip(features[:stop].split(batch_size), labels[:stop].split(batch_size))
        return
    # Blocks are sized by whole rows, labels included (the sizes above were tuned so), though
    # only the features are gathered block by block.
    row_bytes = (features[:1].nbytes + labels[:1].nbytes) or 1
    block_bytes = PREFETCH_BLOCK_BYTES if prefetch else BLOCK_BYTES
    # A whole number of batches per block, so block edges are batch edges.
    block = max(1, block_bytes // (batch_size * row_bytes)) * batch_size
    blocks = _gathered_blocks(features, labels, order[:stop], block, reuse_buffer, prefetch)
    for X_block, y_block in blocks:
        # split makes all of the block's batch views in one call, not one slice per step.
        yield from zip(X_block.split(batch_size), y_block.split(batch_size))


def _gathered_blocks(
    features: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    block: int,
    reuse_buffer: bool,
    prefetch: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of order, `block` at a time: features gathered here or one block ahead on a
    thread, each with its slice of the labels, which are gathered once in order."""
    starts = range(0, len(order), block)
    prefetch = prefetch and len(starts) > 1  # one block: nothing to overlap it with
    row_size = features[:1].numel()
    # BLAS (MKL) rounds a product by where its rows start, to the 64 bytes: a batch at
    # another offset in its block gave w 1 ulp off. So each block is placed in its buffer
    # (64-byte aligned, as torch allocates) where a gather of the whole epoch would have it,
    # and a batch lies the same whatever the block size: with the gather thread or without.
    slack = ALIGNMENT // features.element_size()
    buffers: list[torch.Tensor] = []
    if reuse_buffer:  # one per block in flight: the caller's and, with prefetch, the next
        rows = min(block, len(order))
        buffers = [features.new_empty(rows * row_size + slack)
                   for _ in range(2 if prefetch else 1)]

    def gather(k: int) -> torch.Tensor:
        idx = order[starts[k]:starts[k] + block]
        if features.requires_grad:  # an out= gather is not tracked: batches autograd follows
            return features.index_select(0, idx)
        flat = buffers[k % len(buffers)] if buffers else features.new_empty(
            len(idx) * row_size + slack)
        at = starts[k] * row_size % slack
        X_buf = flat[at:at + len(idx) * row_size].view(len(idx), *features.shape[1:])
        return torch.index_select(features, 0, idx, out=X_buf)

    if not prefetch:
        y_ordered = gather_labels(labels, order)
        for k, start in enumerate(starts):
            yield gather(k), y_ordered[start:start + block]
        return
    # The copy runs without the GIL, so it overlaps the caller's steps on another core. Left
    # early (an error in a step), the with block waits for the one gather in flight.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torchlr-gather") as pool:
        ahead = pool.submit(gather, 0)
        y_ordered = gather_labels(labels, order)  # meanwhile, here
        for k, start in enumerate(starts):
            current = ahead.result()
            if k + 1 < len(starts):
                # Into the other buffer, which held block k - 1: the caller asked for a batch
                # of block k, so it is done with those.
                ahead = pool.submit(gather, k + 1)
            yield current, y_ordered[start:start + block]


def gather_labels(labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """All of the epoch's labels in order, in one gather (n x 4 bytes at one label a row).

    Gathered block by block beside the features, each label is a read from main memory,
    since the rows gathered before it pushed the labels out of the cache. One thread's
    gather of a 1Mx100 epoch took 125-133 ms that way and takes 110-112 ms with the labels
    gathered alone, which stay cached: 4-6 ms of it.
    """
    if labels.dim() == 2 and labels.shape[1] == 1 and labels.is_contiguous():
        # A 1-D gather: index_select copies a (n, 1) tensor a row at a time, 2x slower.
        return labels.view(-1).index_select(0, order).view(-1, 1)
    return labels.index_select(0, order)
