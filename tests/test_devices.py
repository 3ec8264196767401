import pytest
import torch

from torchlr.devices import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu", "", "cpu:0:1", "mps:1"])
def test_unknown_device_lists_choices(bad):
    with pytest.raises(ValueError, match="is not a device name") as info:
        resolve_device(bad)
    assert repr(bad) in str(info.value) and "cuda:N" in str(info.value)


def test_non_string_device():
    with pytest.raises(TypeError, match="device"):
        resolve_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_requested_without_cuda(name):
    with pytest.raises(ValueError, match="CUDA is not available") as info:
        resolve_device(name)
    assert repr(name) in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_mps_requested_without_mps():
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("MPS is present here")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")


def test_a_cpu_tensors_own_device_object_is_taken():
    # torch.device("cpu", 0) (and an MPS tensor's mps:0) went through the name pattern.
    assert resolve_device(torch.device("cpu", 0)) == torch.device("cpu")
    assert resolve_device(torch.zeros(1).device) == torch.device("cpu")


def test_the_names_a_cpu_device_prints_are_taken():
    # str(torch.device("cpu", 0)) is "cpu:0"; the string form was refused as unknown
    # while the device object itself was taken.
    assert resolve_device("cpu:0") == torch.device("cpu")
    assert resolve_device(str(torch.device("cpu", 0))) == torch.device("cpu")
    with pytest.raises(ValueError, match="is not a device name"):
        resolve_device("cpu:1")  # there is one CPU device


def test_cuda_indices_against_the_devices_present(monkeypatch):
    # As on a machine with two GPUs, the second current: the checks run without one.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(ValueError, match=r"device='cuda:2' was requested but only 2 CUDA"):
        resolve_device("cuda:2")
