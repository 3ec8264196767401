"""The fit's paths beyond the plain one, run on every device present against the CPU.

Each test runs on the CPU everywhere (which checks the test itself) and on CUDA where it is
present: the CUDA-only suite (test_cuda.py) covers the default fit and the graphs, these the
options around them (scaling, validation, checkpoints, streams, process groups). Where a test
compares a fit on the device with the same fit on the CPU, the CPU case would compare a fit
with itself: there the fit is checked against the least-squares line instead (on every
device), and against the CPU only on another device.
"""

import numpy as np
import pytest
import torch
from conftest import chapter_data, requires_cuda

import torchlr
from torchlr.checkpoint import load_model
from torchlr.distributed import launch_fit
from torchlr.stream import BlockStream

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]


def offset_data(n=600):
    """Columns far from mean 0 and std 1 and a target of std ~ 40: scaling matters."""
    X, y = chapter_data(num_examples=n)
    return X * torch.tensor([30.0, 0.5]) + torch.tensor([500.0, -2.0]), 10.0 * y + 80.0


SCALED = dict(standardize=True, standardize_target=True, lr=0.1, batch_size=16,
              val_fraction=0.2, early_stopping=2, num_epochs=6)


# offset_data's target is 10 y + 80, so its noise is 10 times the chapter's 0.01.
NOISE = 0.1
NOISE_FLOOR = NOISE**2 / 2


def least_squares_line(X, y):
    """The exact minimizer of sum (X w + b - y)^2: torch.linalg.lstsq on [X, 1] in float64.
    Returns w (d,) and b, in the data's own units."""
    A = torch.cat([X.double(), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(A, y.double().reshape(-1, 1)).solution.reshape(-1)
    return solution[:-1], solution[-1].item()


def assert_near_least_squares(result, X, y, rtol=1e-3):
    """A few scaled epochs of SGD end within minibatch noise of the least-squares line of
    the same rows, in original units.

    The line's w is (0.67, -68) and b about -347; the minibatch noise keeps SGD's from it by
    1e-4 relative or so (3e-4 at most, measured over seeds 0-4 of both tests' fits), while an
    unscaling that drops a column's mean or scale, or the target's, moves w or b by O(1).
    """
    w, b = least_squares_line(X, y)
    torch.testing.assert_close(result.w.double(), w, rtol=rtol, atol=0)
    assert result.b == pytest.approx(b, rel=rtol)


def assert_same_fit(a, b, rtol=1e-4):
    torch.testing.assert_close(a.w_history, b.w_history, rtol=rtol, atol=1e-4)
    torch.testing.assert_close(a.b_history, b.b_history, rtol=rtol, atol=1e-4)
    assert a.losses == pytest.approx(b.losses, rel=rtol * 10)


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_on_the_device_with_scaling_and_validation(device, tmp_path):
    # Data already on the device, scaled, with held-out rows, early stopping and TensorBoard:
    # scaling statistics taken on the device once met CPU copies of w and failed.
    X, y = offset_data()
    here = torchlr.fit(X.to(device), y.to(device), device=device, logdir=tmp_path, **SCALED)
    # Against no fit: the line of all 600 rows (the fit trains on 480 of them, which the
    # noise moves from it by about as much as SGD's jitter), and the data's noise floor.
    assert_near_least_squares(here, X, y)
    # Early stopping kept the epoch of the lowest validation loss.
    assert here.best_epoch == 1 + here.val_losses.index(min(here.val_losses))
    assert NOISE_FLOOR / 2 < min(here.val_losses) < NOISE_FLOOR * 1.6  # measured: 1.33
    predicted = here.predict(X.to(device))
    assert predicted.device == X.to(device).device
    w, b = least_squares_line(X, y)
    # Measured 0.021 at most: well inside the noise, while a wrong unscaling is off by tens.
    torch.testing.assert_close(predicted.cpu().double(), X.double() @ w.reshape(-1, 1) + b,
                               rtol=0, atol=NOISE / 2)
    if device == "cpu":
        return  # the same fit on the CPU would be this one
    cpu = torchlr.fit(X, y, device="cpu", **SCALED)
    assert_same_fit(here, cpu)
    assert here.best_epoch == cpu.best_epoch
    assert here.val_losses == pytest.approx(cpu.val_losses, rel=1e-3)
    torch.testing.assert_close(predicted.cpu(), cpu.predict(X), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_save_resume_and_load_on_the_device(device, impl, tmp_path):
    X, y = offset_data()
    options = dict(SCALED, impl=impl, device=device)
    straight = torchlr.fit(X, y, **options)
    path = str(tmp_path / "run.pt")
    torchlr.fit(X, y, **dict(options, num_epochs=2), save=path)
    resumed = torchlr.fit(X, y, **options, resume=path, save=path)
    assert_same_fit(resumed, straight, rtol=1e-6)
    # A checkpoint written on the device predicts on the CPU, and the other way round.
    for where in ("cpu", device):
        model = load_model(path, device=where)
        torch.testing.assert_close(model.predict(X.to(where)).cpu(), straight.predict(X),
                                   rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_a_stream_trains_on_the_device_as_on_the_cpu(device, tmp_path):
    X, y = offset_data(n=500)
    path = tmp_path / "table.npy"
    np.save(path, torch.cat([X, y], 1).numpy())
    options = dict(standardize=True, standardize_target=True, lr=0.1, batch_size=16,
                   num_epochs=3)
    here = torchlr.fit(BlockStream(path, block_rows=97), None, device=device, **options)
    # Against no fit: the least-squares line of the rows streamed, and its loss, the least
    # any line has on them (the fit's may be lower only by float32 rounding of the sum).
    assert_near_least_squares(here, X, y)
    w, b = least_squares_line(X, y)
    least = ((X.double() @ w.reshape(-1, 1) + b - y.double()) ** 2 / 2).mean().item()
    # Measured: 1.004 times the least (1.033 at most over seeds 0-4).
    assert least * (1 - 1e-5) <= here.losses[-1] < least * 1.05
    if device == "cpu":
        return  # the same fit on the CPU would be this one
    cpu = torchlr.fit(BlockStream(path, block_rows=97), None, device="cpu", **options)
    assert_same_fit(here, cpu)


@pytest.mark.parametrize("device", DEVICES)
def test_a_process_group_of_one_on_the_device(device):
    # gloo on the CPU, NCCL on CUDA: the barrier, the told_to_group flags and check_same
    # run their collectives on the fit's device.
    X, y = chapter_data(num_examples=300)
    one = torchlr.fit(X, y, device=device, num_epochs=2)
    group = launch_fit(X, y, nprocs=1, device=device, num_epochs=2)
    assert_same_fit(group, one, rtol=1e-5)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("impl", ["scratch", "concise"])
def test_graphs_with_a_one_step_tail_under_a_callers_no_grad(impl):
    # 1003 rows in batches of 59: 16 full batches and a short one per epoch, so the chunked
    # graphs leave a one-step graph; the caller's inference_mode must not reach the capture.
    X, y = chapter_data(num_examples=1003)
    options = dict(impl=impl, device="cuda", batch_size=59, num_epochs=5)
    eager = torchlr.fit(X, y, **options)
    with torch.inference_mode():
        graphed = torchlr.fit(X, y, cuda_graphs=True, **options)
    for name in ("w_history", "b_history", "train_losses"):
        torch.testing.assert_close(getattr(graphed, name), getattr(eager, name),
                                   rtol=1e-6, atol=1e-7)
