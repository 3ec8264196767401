"""Run the notebooks top to bottom in a Jupyter kernel, and save them with their outputs.

    python notebooks/execute.py            # execute all notebooks and write them back
    python notebooks/execute.py notebooks/02_*.ipynb   # only some

The kernel runs in the notebooks/ subfolder of a temporary folder, with the checkout first
on PYTHONPATH, so it imports this torchlr and anything a notebook writes is thrown away.
Cells tagged `skip-execution` (the TensorBoard cell) are left as they are. The tests use
`execute_notebook` too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Union

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
SKIP_TAG = "skip-execution"


def execute_notebook(path: Union[str, Path], workdir: Union[str, Path],
                     timeout: int = 120) -> nbformat.NotebookNode:
    """Execute the notebook at path in a fresh python3 kernel; return it with its outputs.

    The kernel's cwd is workdir/notebooks, mirroring the checkout, so a notebook's relative
    paths such as ../runs land inside workdir.
    """
    nb = nbformat.read(path, as_version=4)
    cwd = Path(workdir) / "notebooks"
    cwd.mkdir(parents=True, exist_ok=True)
    python_path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                 if p]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        # Keep kernel-side caches and history out of the user's home and the checkout.
        "IPYTHONDIR": str(Path(workdir) / ".ipython"),
        "MPLCONFIGDIR": str(Path(workdir) / ".matplotlib"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    # "python3" resolves to the running interpreter's ipykernel: the venv's when run from it.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            skip_cells_with_tag=SKIP_TAG,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env, cwd=str(cwd))
    return nb


def main(argv: list[str]) -> int:
    """Execute the named notebooks (default: all) and write each back with its outputs."""
    paths = [Path(name).resolve() if Path(name).exists() else NOTEBOOKS / name for name in argv]
    paths = paths or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    for path in paths:
        with tempfile.TemporaryDirectory() as workdir:
            nb = execute_notebook(path, workdir)
        nbformat.write(nb, path)
        print(f"executed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
