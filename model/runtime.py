"""Runtime helpers: device choice, seeding, and atomic file output."""
import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def resolve_device(spec="auto"):
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; auto picks CUDA when present.

    Raises:
        UserError: CUDA asked for but absent, a GPU index that does not exist, or a bad spec.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} asked for CUDA, but no CUDA device is available; "
                            "use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def seed_everything(seed):
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so that a run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def prepare_output_folder(folder, flag="--out"):
    """Create ``folder`` if needed and make sure files can be written in it.

    Called before any work is done, so that a long computation never fails at its end.

    Raises:
        UserError: ``folder`` is a file, lies under a file, or cannot be written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write {flag} {folder}: it is a file, and {flag} names a "
                        "folder for the outputs")
    _try_writing_in(folder, f"{flag} {folder}")
    return folder


def check_writable_file(path, flag="--out"):
    """Make sure ``path`` can be written as a file, before any work is done.

    Raises:
        UserError: ``path`` is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {flag} {path}: it is a folder, and {flag} names a "
                        "file")
    _try_writing_in(path.parent, f"{flag} {path}")


def _try_writing_in(folder, what):
    """Create ``folder`` and a temporary file in it; a UserError about ``what`` if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"cannot write {what}: {_os_reason(folder, error)}") from None


def _os_reason(path, error):
    """A short reason for an OSError, naming the part of ``path`` that is a file if any."""
    for parent in [Path(path), *Path(path).parents]:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return error.strerror or str(error)


@contextmanager
def atomic_open(path):
    """Open ``path`` for binary writing so that it appears whole or not at all.

    Writes go to a temporary file in the same folder, which is flushed, synced and moved over
    ``path`` with ``os.replace`` only when the block ends without error. An interrupted write
    (an exception, Ctrl-C, kill -9) leaves any earlier file at ``path`` untouched.

    Raises:
        UserError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path}: {_os_reason(path.parent, error)}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except OSError as error:  # e.g. path is a folder, or the disk is full
        Path(temp_name).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def save_json(data, path):
    """Write ``data`` as indented JSON atomically."""
    with atomic_open(path) as file:
        file.write(json.dumps(data, indent=1).encode())


def write_figure(figure, path):
    """Save a figure (see :func:`save_figure`) and tell the user where it went."""
    print(f"wrote {save_figure(figure, path)}")


def save_figure(figure, path, dpi=120):
    """Write a ``matplotlib.figure.Figure`` to a PNG atomically.

    The project builds figures as plain ``Figure`` objects, not through pyplot, so no GUI
    backend is touched and nothing needs closing. Returns ``path``.
    """
    with atomic_open(path) as file:
        figure.savefig(file, format="png", dpi=dpi, bbox_inches="tight")
    return path
