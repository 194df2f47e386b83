import pytest
import torch
from matplotlib.figure import Figure

from model.errors import UserError
from model.figures.plotting import save_figure
from model.runtime.device import resolve_device, seed_everything
from model.runtime.files import atomic_open

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")


def test_cpu_and_auto_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_user_error(spec):
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x"])
def test_unknown_device_is_a_user_error(spec):
    with pytest.raises(UserError, match="device"):
        resolve_device(spec)


def test_seed_everything_repeats_random_draws():
    seed_everything(3)
    first = torch.rand(5)
    seed_everything(3)
    assert torch.equal(first, torch.rand(5))


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out" / "file.bin"
    with atomic_open(path) as file:
        file.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as file:
            file.write(b"new but unfinished")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_unwritable_destination_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        with atomic_open(blocker / "x.png"):
            pass


def test_save_figure_writes_a_png(tmp_path):
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    save_figure(figure, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_freed_memory_is_kept_on_glibc_and_skipped_without_mallopt(monkeypatch):
    import ctypes
    import platform

    import model.runtime.device

    if platform.libc_ver()[0] == "glibc":
        assert model.runtime.device.keep_freed_memory()

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert model.runtime.device.keep_freed_memory() is False
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a C library without mallopt
    assert model.runtime.device.keep_freed_memory() is False
