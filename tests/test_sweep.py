"""torchlr.sweep: one fit per learning rate, divergence kept as a point."""

import math

import pytest
import torch

import torchlr
from torchlr import sweep


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(3)
    return torchlr.synthetic_data(torch.tensor([2.0, -3.4]), 4.2, 200, generator=gen)


def test_each_point_is_the_fit_with_that_learning_rate(data):
    X, y = data
    points = sweep.lr_sweep(X, y, [0.01, 0.05], num_epochs=2, device="cpu", seed=5)
    assert [p.lr for p in points] == [0.01, 0.05]
    for p in points:
        alone = torchlr.fit(X, y, lr=p.lr, num_epochs=2, device="cpu", seed=5)
        assert p.losses == alone.losses
        assert p.final_loss == alone.losses[-1]
        torch.testing.assert_close(p.result.w, alone.w, rtol=0, atol=0)
        assert not p.diverged and p.error is None


def test_a_diverging_rate_becomes_a_point_with_the_error(data):
    X, y = data
    small, huge = sweep.lr_sweep(X, y, [0.03, 100.0], num_epochs=2, device="cpu")
    assert not small.diverged
    assert huge.diverged and huge.result is None and huge.losses == []
    assert math.isinf(huge.final_loss)
    with pytest.raises(torchlr.DivergenceError) as direct:
        torchlr.fit(X, y, lr=100.0, num_epochs=2, device="cpu")
    assert huge.error == str(direct.value)


def test_a_base_config_is_used_and_every_rate_is_checked_before_any_fit(data, monkeypatch):
    X, y = data
    calls = []
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="lr"):
        sweep.lr_sweep(X, y, [0.1, -1.0], torchlr.FitConfig(num_epochs=1))
    assert calls == []
    monkeypatch.undo()
    (point,) = sweep.lr_sweep(X, y, [0.1], torchlr.FitConfig(num_epochs=1, impl="concise"),
                              device="cpu")
    assert point.result.config.impl == "concise" and point.result.config.lr == 0.1
    assert len(point.losses) == 1


def test_a_sweep_writes_no_checkpoint(tmp_path):
    X, y = torch.randn(20, 2), torch.randn(20)
    with pytest.raises(ValueError, match="lr_sweep takes no save or resume"):
        sweep.lr_sweep(X, y, [0.01, 0.1], save=str(tmp_path / "m.pt"))
    assert list(tmp_path.iterdir()) == []


def test_lr_sweep_says_it_takes_no_on_progress():
    X, y = torch.randn(20, 2), torch.randn(20, 1)
    with pytest.raises(TypeError, match="lr_sweep takes no on_progress"):
        sweep.lr_sweep(X, y, [0.1], on_progress=print)


def test_lr_sweep_names_an_unknown_option_as_fit_does():
    # It gave FitConfig.__init__'s "unexpected keyword argument".
    X, y = torch.randn(20, 2), torch.randn(20, 1)
    with pytest.raises(TypeError, match=r"^lr_sweep\(\) got unknown option\(s\) 'epochs' "
                                        r"\(did you mean num_epochs for 'epochs'\?\)"):
        sweep.lr_sweep(X, y, [0.1], epochs=2)
