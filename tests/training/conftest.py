"""The trainer tests' fixtures (the tiny base lives in tests/conftest.py: the registry tests share it)."""

import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_training_process():
    """One intra-op thread in this process and in the trainer subprocesses it starts (what torchrun gives each
    rank): on a small machine shared with other work, two spinning threads per process made a tiny model's step
    ~13 times slower. Results do not depend on it, except the last bits of floating-point sums."""
    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = variable
