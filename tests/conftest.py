"""Shared fixtures. Scripts and the ``model`` package are imported from the repository root."""
import os
import sys
from pathlib import Path

# Before torch (and its OpenMP runtime) is first imported, here and in every subprocess the
# tests start: OpenMP threads that wait for work sleep instead of spinning. On a busy 2-core
# CPU a spinning thread takes the core the other one needs, and the suite ran twice as long
# (the report of tests/test_folders.py: 50 s with spinning threads, 27 s without). It
# changes no result: the number of threads, and so every sum's order, stays the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shapes_test_split():
    from model.data.datasets import load_dataset

    return load_dataset("shapes", "test")


def stderr_lines(captured):
    """Non-empty lines a script printed on stderr."""
    return [line for line in captured.err.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def trained_shapes_checkpoint(tmp_path_factory):
    """A tiny ``simple`` net trained for one epoch on 512 shapes images (a few seconds)."""
    import train_cnn

    path = tmp_path_factory.mktemp("checkpoints") / "shapes_simple.pt"
    code = train_cnn.main(["--dataset", "shapes", "--arch", "simple", "--epochs", "1",
                           "--max-train-images", "512", "--no-progress", "--out", str(path)])
    assert code == 0
    return path
