"""torchlr: the d2l chapter "Linear Regression Implementation from Scratch" in PyTorch."""

from torchlr import analytic, concise, scratch
from torchlr.checkpoint import load_model
from torchlr.closed_form import least_squares
from torchlr.data import data_iter, synthetic_data
from torchlr.devices import resolve_device
from torchlr.io import load_data
from torchlr.stream import BlockStream
from torchlr.train import DivergenceError, FitConfig, FitResult, Progress, evaluate, fit

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
