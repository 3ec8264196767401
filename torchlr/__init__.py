"""torchlr: the d2l chapter "Linear Regression Implementation from Scratch" in PyTorch.

The public names are loaded on first use (PEP 562), so `import torchlr` itself imports no
torch: `torchlr.fit`, `from torchlr import fit` and `torchlr.scratch` import their submodule
then. The `torchlr` command needs that: its entry point, torchlr.launch, must be running
before the second that `import torch` takes, so that a Ctrl-C in that second ends with one
line instead of a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BlockStream",
    "DivergenceError",
    "FitConfig",
    "FitResult",
    "Progress",
    "__version__",
    "analytic",
    "concise",
    "data_iter",
    "evaluate",
    "fit",
    "least_squares",
    "load_data",
    "load_model",
    "resolve_device",
    "scratch",
    "synthetic_data",
]

# Each public name that is not a submodule, and the submodule that defines it.
_DEFINED_IN = {
    "BlockStream": "stream",
    "DivergenceError": "train",
    "FitConfig": "train",
    "FitResult": "train",
    "Progress": "train",
    "data_iter": "data",
    "evaluate": "train",
    "fit": "train",
    "least_squares": "closed_form",
    "load_data": "io",
    "load_model": "checkpoint",
    "resolve_device": "devices",
    "synthetic_data": "data",
}

if TYPE_CHECKING:  # what editors and type checkers see; at run time, __getattr__ below
    from torchlr import analytic, concise, scratch
    from torchlr.checkpoint import load_model
    from torchlr.closed_form import least_squares
    from torchlr.data import data_iter, synthetic_data
    from torchlr.devices import resolve_device
    from torchlr.io import load_data
    from torchlr.stream import BlockStream
    from torchlr.train import DivergenceError, FitConfig, FitResult, Progress, evaluate, fit
else:  # hidden from type checkers, which would otherwise accept any name, typos included

    def __getattr__(name: str) -> Any:
        """A public name, or any submodule (`torchlr.train`), imported on first use."""
        if name in _DEFINED_IN:
            value = getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
        elif name.startswith("__"):  # __wrapped__, __loader__...: asked of any module
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        else:
            try:
                value = importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":  # the submodule's own import failed
                    raise
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        globals()[name] = value  # found once: later lookups skip __getattr__
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
