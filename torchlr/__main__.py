"""python -m torchlr: the same as the torchlr command."""

from torchlr.cli import console

if __name__ == "__main__":
    console()
