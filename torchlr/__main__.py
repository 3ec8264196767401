"""python -m torchlr: the same as the torchlr command."""

from torchlr.launch import console

if __name__ == "__main__":
    console()
