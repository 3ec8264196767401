"""Shared fixtures: the chapter's data set and small helpers."""

from __future__ import annotations

import os
import pathlib
import re
import signal

import pytest
import torch
import torch.distributed as dist

import torchlr
from torchlr.data import batch_order
from torchlr.scratch import init_params, linreg, squared_loss

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """A test that runs the CLI's console() leaves its handlers behind (after main, SIGINT
    ends the process at once): later tests, and a Ctrl-C of the suite, need Python's."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        if signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)
TRUE_W = torch.tensor([2.0, -3.4])
TRUE_B = 4.2


def chapter_data(seed: int = 0, num_examples: int = 1000):
    """The chapter's synthetic data set, drawn from its own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torchlr.synthetic_data(TRUE_W, TRUE_B, num_examples, generator=g)


def hand_loop(X, y, *, seed, batch_size, num_epochs, permutation="randperm", lr=0.03):
    """The chapter's loop written out: fit's generator use (init_params, then each epoch's
    batch_order), one gather per batch, autograd and the sgd formula. Returns the final w
    (d, 1) and b (1,), and (num_epochs + 1, d + 1): [w, b] at the start and after each epoch."""
    gen = torch.Generator().manual_seed(seed)
    w, b = init_params(X.shape[1], generator=gen)
    history = [torch.cat([w.detach().reshape(-1), b.detach()])]
    for _ in range(num_epochs):
        order = batch_order(len(X), generator=gen, permutation=permutation)
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            squared_loss(linreg(X[idx], w, b), y[idx]).sum().backward()
            with torch.no_grad():
                for p in (w, b):
                    p -= lr * p.grad / len(idx)
                    p.grad = None
        history.append(torch.cat([w.detach().reshape(-1), b.detach()]))
    return w.detach(), b.detach(), torch.stack(history)


class Payload:
    """Pickled code: unpickled where code may run, it makes the folder "pwned" in the
    working directory. A reader that allows no code refuses it and leaves no folder."""

    def __reduce__(self):
        return (os.mkdir, ("pwned",))


@pytest.fixture
def data():
    return chapter_data()


@pytest.fixture
def orders_ahead_on_cpu(monkeypatch):
    """Fits on the CPU draw their orders an epoch ahead, as on a GPU; returns a list that
    gets one entry per order drawn."""
    import torchlr.data as data_module

    monkeypatch.setattr(data_module, "AHEAD_DEVICES", ("cpu",))
    monkeypatch.setattr(data_module, "AHEAD_MIN_ROWS", 1)
    draws = []
    draw_next = data_module.OrdersAhead.draw_next

    def counted(self):
        draws.append(self.num_examples)
        draw_next(self)

    monkeypatch.setattr(data_module.OrdersAhead, "draw_next", counted)
    return draws


# A printed number, integer or not, that is not part of a word or of a dotted version.
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w|\.\d)")
# The committed outputs were printed on one CPU; another (AVX-512 vs AVX2, other MKL
# kernels) rounds float32 sums differently. Measured across two CPUs: 1.5e-6 relative at
# most (losses after 3 to 5 epochs of SGD); 1e-4 leaves room for other kernels, while a
# stale output (other seed, rate, data or epochs) moves its numbers by 1e-3 or more.
PRINT_RTOL = 1e-4
# Below this, a number is rounding residue: a gap between two float32 runs is an ulp or two
# of the O(1) parameters (ulp(4.2) = 4.8e-7), and it printed as 0, 2.38e-07 and 4.77e-07.
PRINT_ZERO = 1e-6


def _is_integer(number: str) -> bool:
    return number.lstrip("-").isdigit()


def _half_unit(number: str) -> float:
    """Half a unit in the last printed digit: how far printing may have moved the value."""
    if _is_integer(number):
        return 0.0  # "0" from f"{0.0:g}" is exact
    mantissa, _, exponent = number.lower().partition("e")
    return 0.5 * 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def _close(x: str, y: str, rtol: float) -> bool:
    if _is_integer(x) and _is_integer(y):
        return x == y  # counts: epochs, steps, sizes
    fx, fy = float(x), float(y)
    scale = max(abs(fx), abs(fy))
    return scale <= PRINT_ZERO or abs(fx - fy) <= rtol * scale + _half_unit(x) + _half_unit(y)


def _tokens(line: str) -> tuple[list[list[str]], list[str]]:
    """The words between the numbers (spacing ignored: numpy pads arrays to the widest
    element, which depends on the digits), and the numbers."""
    parts = re.split(f"({NUMBER.pattern})", line)
    return [text.split() for text in parts[::2]], parts[1::2]


def same_but_rounding(a: str, b: str, rtol: float = PRINT_RTOL) -> bool:
    """Same lines with the same words, and numbers equal but for float rounding.

    Integers must match exactly. Other numbers may differ by rtol (relative), plus half a
    unit in each one's last printed digit; two numbers both under PRINT_ZERO are equal.
    """
    lines_a, lines_b = a.splitlines(), b.splitlines()
    if len(lines_a) != len(lines_b):
        return False
    for line_a, line_b in zip(lines_a, lines_b):
        (words_a, numbers_a), (words_b, numbers_b) = _tokens(line_a), _tokens(line_b)
        if words_a != words_b or not all(_close(x, y, rtol)
                                         for x, y in zip(numbers_a, numbers_b)):
            return False
    return True


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def single_process_group():
    """A gloo group of one process, in this process: fit's group path without a spawn."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
