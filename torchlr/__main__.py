"""python -m torchlr: the same as the torchlr command."""

from torchlr import distributed
from torchlr.cli import main

if __name__ == "__main__":
    code = main()
    if distributed.in_torchrun():
        distributed.exit_now(code)  # a process torchrun started skips the interpreter's shutdown
    raise SystemExit(code)
