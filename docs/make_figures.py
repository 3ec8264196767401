"""Draw the README's figures, one from each notebook, with torchlr.plots.

    .venv/bin/python docs/make_figures.py [FOLDER]    # writes docs/*.png by default
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import torchlr
from torchlr import plots
from torchlr.sweep import lr_sweep

DOCS = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Write scatter.png, trajectories.png and lr_sweep.png to docs/ (or the folder given)."""
    out = Path(argv[0]) if argv else DOCS
    if out.exists() and not out.is_dir():
        print(f"make_figures.py: {out} is not a folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)  # a folder to write to, made if new
    true_w, true_b = torch.tensor([2.0, -3.4]), 4.2
    gen = torch.Generator().manual_seed(0)  # the notebooks' and the CLI's data set
    features, labels = torchlr.synthetic_data(true_w, true_b, 1000, generator=gen)
    config = torchlr.FitConfig(device="cpu")
    runs = {impl: torchlr.fit(features, labels, config, impl=impl)
            for impl in ("scratch", "concise")}
    exact = torchlr.least_squares(features, labels)
    figures = {
        "scatter.png": plots.scatter(features, labels, w=runs["scratch"].w,
                                     b=runs["scratch"].b),
        "trajectories.png": plots.trajectories(runs, true_w=true_w, true_b=true_b,
                                               exact=exact),
        "lr_sweep.png": plots.lr_sweep(lr_sweep(features, labels,
                                                [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0],
                                                config)),
    }
    for name, fig in figures.items():
        # Fixed metadata: regenerating unchanged figures gives identical files.
        fig.savefig(out / name, dpi=100, metadata={"Software": None})
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
