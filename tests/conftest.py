"""Shared fixtures. Scripts and the ``model`` package are imported from the repository root."""
import sys
from pathlib import Path

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
