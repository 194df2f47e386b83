"""Shared fixtures. Scripts and the ``model`` package are imported from the repository root."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shapes_test_split():
    from model.datasets import load_dataset

    return load_dataset("shapes", "test")


def stderr_lines(captured):
    """Non-empty lines a script printed on stderr."""
    return [line for line in captured.err.splitlines() if line.strip()]
