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
# Under pytest-xdist (the README's ``-n 2``) every worker, and every process its tests start,
# computes with one thread: two workers keep the two cores busy between them, where two
# threads each would make four threads wait for each other at every op.
# float32 is the reference of every equality test: no bfloat16 where it would be fast, in the
# tests' own code and in every script they start (tests/test_train_cli.py tests the switch).
os.environ["CNN_VIZ_BFLOAT16"] = "off"
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shapes_test_split():
    from model.data.datasets import load_dataset

    return load_dataset("shapes", "test")


def random_batch_norm_net(arch, size, seed=0):
    """``arch`` with random weights in eval mode and float64. BatchNorm's statistics are those
    of random images (at initialization MobileNetV2's ReLU6 units are all saturated or dead
    and no ablation would change a score), its affine part random, so no layer is an
    identity."""
    import torch  # here, not at the top: the environment above comes first
    import torch.nn as nn

    from model.nets.architectures import build_model

    torch.manual_seed(seed)
    model = build_model(arch, 3, 5, size).double()
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None  # the running statistics: the plain mean over batches seen
            norm.reset_running_stats()
        model.train()(torch.randn(2, 3, size, size).double())
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(0.0, 0.3)  # most units alive after the ReLU
    return model.eval()


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


@pytest.fixture(scope="session")
def shapes_report(tmp_path_factory):
    """A full report, every section and an explorer of 4 images, on a vgg that visualize_all
    trains itself for one epoch on 512 images (with snapshots): built once, read by
    tests/test_report.py and tests/test_browser.py. Returns the report folder; the checkpoint
    is ``tiny.pt`` beside it.

    Under pytest-xdist the workers share it: the first to need it builds it in the session's
    common temporary folder, under a file lock, and the others wait for it and read it."""
    from filelock import FileLock  # torch's own dependency

    import visualize_all

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # no xdist: this session's own folder
        folder = tmp_path_factory.mktemp("report")
    else:  # pytest-of-<user>/pytest-<n>/: this xdist session's, shared by its workers
        folder = tmp_path_factory.getbasetemp().parent / "shared_report"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "report" / "summary.json").is_file():
            code = visualize_all.main(["--dataset", "shapes", "--checkpoint",
                                       str(folder / "tiny.pt"), "--retrain", "--epochs", "1",
                                       "--max-train-images", "512", "--num-images", "6",
                                       "--explorer-images", "4", "--out",
                                       str(folder / "report")])
            assert code == 0
    return folder / "report"


# The order in which pytest-xdist's workers take the test files (``--dist loadfile``): the file
# that builds the shared report first; then the slowest files, longest first (measured on 2
# cores, in seconds of one worker), so that the run ends on small files and no worker is left
# alone with a long one; then the rest in their order. tests/test_report.py, which reads the
# report, comes after the first two, when the report is built: taken at once, its worker
# waited 40 s for the other to build it.
FILE_ORDER = ["test_browser.py",       # builds ``shapes_report`` (35 s), then reads it
              "test_faults.py",        # 63 s
              "test_distributed.py",   # 57 s
              "test_report.py",        # reads ``shapes_report``: 22 s
              "test_zoo.py",           # 48 s
              "test_any_net.py",       # 36 s
              "test_incremental.py",   # 32 s
              "test_folders.py",       # 29 s
              "test_own_nets_scripts.py",  # 24 s
              "test_train_cli.py",     # 21 s
              "test_graph_split.py"]   # 12 s


def pytest_configure(config):
    """pytest-xdist (3.x) hands out the files with the most tests first unless told not to:
    it is told to keep :data:`FILE_ORDER` (an older one without the option keeps it anyway)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The files in :data:`FILE_ORDER`, the others after them in their order."""
    def place(item):
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)

    items.sort(key=place)  # stable: each file keeps its order
