"""python -m torchlr: the same as the torchlr command."""

from torchlr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
