"""Shared pytest fixtures: the embedded digits data and a small CNN trained on it once per session."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits_data():
    """(train, val) digits at 24 px."""
    from debugatlas.data import digits

    return digits(size=24)


@pytest.fixture(scope="session")
def trained_cnn(digits_data):
    """SmallCNN(width=8) trained for 3 epochs on the digits train split (seeded), in eval mode."""
    from debugatlas.models import SmallCNN, train_classifier

    torch.manual_seed(0)
    return train_classifier(SmallCNN(1, 10, width=8), digits_data[0], epochs=3, seed=0)
