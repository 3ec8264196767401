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
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
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
        # IPython history and profile in the temporary folder, not in ~/.ipython.
        "IPYTHONDIR": str(Path(workdir) / ".ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    # A kernel spec of our own, for this interpreter (the venv's): a "python3" spec that the
    # user installed elsewhere could point at a Python without torch.
    specs = Path(workdir) / "kernels"
    write_kernel_spec(specs / "python3")
    km = KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                            skip_cells_with_tag=SKIP_TAG, record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env, cwd=str(cwd))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    return nb


def merge_streams(outputs: list) -> list:
    """Join consecutive stdout (or stderr) chunks into one output.

    The kernel flushes its streams on a timer, so one print can arrive in pieces; saved
    as they came, a line would be cut in two on a code host.
    """
    merged: list = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (out.output_type == "stream" and last is not None
                and last.output_type == "stream" and last.name == out.name):
            last.text += out.text
        else:
            merged.append(out)
    return merged


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
