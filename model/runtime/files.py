"""Files out: atomic writes (a reader never sees half a file; an interrupted run leaves the
old one), JSON and NumPy arrays, output folders and file-name lengths checked before any work."""
import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from model.errors import UserError


def prepare_output_folder(folder, flag="--out"):
    """Create ``folder`` if needed and make sure files can be written in it.

    Called before any work is done, so that a long computation never fails at its end.

    Raises:
        UserError: ``folder`` is a file, lies under a file, has a name too long, or cannot be
            written.
    """
    folder = Path(folder)
    check_name_length(folder, f"{flag} {folder}")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write {flag} {folder}: it is a file, and {flag} names a "
                        "folder for the outputs")
    _try_writing_in(folder, f"{flag} {folder}")
    return folder


def check_writable_file(path, flag="--out"):
    """Make sure ``path`` can be written as a file, before any work is done.

    Raises:
        UserError: ``path`` is a folder, its name is too long, or its folder cannot be
            created or written.
    """
    path = Path(path)
    check_name_length(path, f"{flag} {path}")
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
        raise UserError(f"cannot write {what}: {os_reason(folder, error)}") from None


def os_reason(path, error):
    """A short reason for an OSError about ``path``: a full disk, a name too long, the part of
    ``path`` that is a file, or the system's own words."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # full or quota
        return f"the disk is full ({error.strerror})"
    if error.errno == errno.ENAMETOOLONG:
        return "a file or folder name in it is too long for the file system"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder should be
        for parent in [Path(path), *Path(path).parents]:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    return error.strerror or str(error)


def name_limit(folder):
    """The longest file name, in bytes, that ``folder``'s file system allows (255 if unknown)."""
    for candidate in [Path(folder), *Path(folder).parents]:
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # missing folder; Windows has no pathconf
            continue
    return 255


def check_name_length(path, what):
    """Refuse a path with a file or folder name longer than its file system allows.

    Raises:
        UserError: names ``what``, the name's length and the limit.
    """
    path = Path(path)
    limit = name_limit(path.parent)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"cannot use {what}: the name '{part[:40]}...' is "
                            f"{len(os.fsencode(part))} bytes long; this file system allows "
                            f"{limit}")


def _temporary_prefix(path):
    """``.<name>.`` for the hidden temporary file beside ``path``, shortened so that the
    temporary name (prefix, 8 random characters, ``.tmp``) fits where ``path`` itself fits."""
    room = name_limit(path.parent) - len(".." + "12345678" + ".tmp")
    name = os.fsencode(path.name)[:room].decode(errors="ignore")
    return f".{name}."


def _final_mode(path):
    """The permissions a plain ``open(path, "w")`` would leave: those of the file already at
    ``path``, else 0o666 less the process's umask (``mkstemp`` alone would give 0o600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def _disk_error(error):
    """The OSError behind ``error`` (itself, or one it was raised while handling), if any.

    ``torch.save`` turns a failed write into a RuntimeError ("enforce fail at
    inline_container.cc") raised while the OSError (e.g. ENOSPC) is being handled.
    """
    while error is not None:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def atomic_open(path):
    """Open ``path`` for binary writing so that it appears whole or not at all.

    Writes go to a hidden temporary file in the same folder, which is flushed, synced, given
    the permissions a plain ``open()`` would give (:func:`_final_mode`) and moved over
    ``path`` with ``os.replace`` only when the block ends without error. An interrupted write
    (an exception, Ctrl-C, SIGTERM, a full disk) removes the temporary file and leaves any
    earlier file at ``path`` untouched; only kill -9 can leave the temporary file behind. A
    symbolic link at ``path`` stays, and the file it points to is replaced.

    Raises:
        UserError: the folder cannot be created or written, a name is too long, or the disk
            is full (the message says whether an earlier file was kept).
    """
    path = Path(path)
    check_name_length(path, str(path))
    if path.is_symlink():  # write where the link points, as open() would, keeping the link
        path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path),
                                             suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path}: {os_reason(path.parent, error)}") from None
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, _final_mode(path))
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        cause = _disk_error(error)
        if cause is None or not isinstance(error, (OSError, RuntimeError)):
            raise
        kept = (f"; the earlier {path} is kept as it was" if path.is_file()
                else "; nothing was written")
        raise UserError(f"cannot write {path}: {os_reason(path.parent, cause)}{kept}") from None


def save_json(data, path):
    """Write ``data`` as indented JSON atomically; returns ``path``."""
    with atomic_open(path) as file:
        file.write(json.dumps(data, indent=1).encode())
    return path


PLAIN_KINDS = "biufU"  # bool, signed and unsigned int, float, unicode: loadable without pickle


def save_arrays(arrays, path):
    """Write named arrays to a NumPy ``.npz`` file atomically; returns ``path``.

    Every value must become a number, bool or string array (no Python objects), so that
    ``np.load(path)`` reads the file without ``allow_pickle``. The name is kept as given
    (``np.savez`` adds ``.npz`` only to a path, not to an open file).
    """
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in arrays.items():
        assert array.dtype.kind in PLAIN_KINDS, f"{name}: {array.dtype} would need pickling"
    with atomic_open(path) as file:
        np.savez(file, **arrays)
    return path
