"""Shared fixtures: the chapter's data set and small helpers."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

import torchlr

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRUE_W = torch.tensor([2.0, -3.4])
TRUE_B = 4.2


def chapter_data(seed: int = 0, num_examples: int = 1000):
    """The chapter's synthetic data set, drawn from its own seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torchlr.synthetic_data(TRUE_W, TRUE_B, num_examples, generator=g)


class Payload:
    """Pickled code: unpickled where code may run, it makes the folder "pwned" in the
    working directory. A reader that allows no code refuses it and leaves no folder."""

    def __reduce__(self):
        return (os.mkdir, ("pwned",))


@pytest.fixture
def data():
    return chapter_data()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
