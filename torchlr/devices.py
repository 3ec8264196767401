"""Turn a device string ("auto", "cpu", "cuda", "cuda:N", "mps") into a torch.device."""

from __future__ import annotations

import re

import torch

# "cpu:0" and "mps:0" are what str() of a CPU/MPS tensor's device may say: there is one of each.
_DEVICE_RE = re.compile(r"^(auto|(cpu|mps)(:0)?|cuda(:\d+)?)$")
CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name, checking that the device exists; "auto" means CUDA if present."""
    if isinstance(device, torch.device):
        # A CPU or MPS tensor's .device may carry index 0 (mps:0): there is one of each.
        spec = device.type if device.type in ("cpu", "mps") else str(device)
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise TypeError(
            f"device must be a str or torch.device, got {type(device).__name__}: {device!r}"
        )
    if not _DEVICE_RE.match(spec):
        raise ValueError(f"device={device!r} is not a device name; expected one of "
                         f"{', '.join(CHOICES)}.")
    spec = spec.removesuffix(":0") if spec[:3] in ("cpu", "mps") else spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
                "use device='cpu' or device='auto'."
            )
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(
                f"device={device!r} was requested but only {count} CUDA device(s) exist."
            )
        return torch.device("cuda", index)
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={device!r} was requested but MPS is not available.")
    return torch.device(spec)
