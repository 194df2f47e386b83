"""matplotlib, set up for command-line scripts: quiet on stderr, whatever the machine; figures
saved atomically (:func:`save_figure`).

Every module that draws imports matplotlib through here, so that this setup runs first:

- matplotlib warns on stderr at import when its config or cache folder (``~/.config``,
  ``~/.cache``) cannot be written (a read-only home, a shared account), and then rebuilds its
  font cache in a new temporary folder on every run. Here it gets one persistent folder per
  user in the temporary directory instead: no warning, and the font cache is built once.
- Text in a font that lacks some characters (a non-Latin file name in a title) makes
  matplotlib warn once per character; those characters are drawn as boxes without a warning.
"""
import os
import sys
import tempfile
import warnings
from pathlib import Path

from model.runtime.files import atomic_open


def _writable_folder(folder):
    """Whether ``folder`` exists, or can be created, and can be written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK) and Path(folder).is_dir()


def _matplotlib_folders():
    """The config and cache folders matplotlib would use (its own rules, without importing it)."""
    if os.environ.get("MPLCONFIGDIR"):
        return [os.environ["MPLCONFIGDIR"]]
    home = Path.home()
    if sys.platform.startswith(("linux", "freebsd")):
        return [Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
                Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"]
    return [home / ".matplotlib"]


def _ensure_writable_config_folder():
    try:
        folders = _matplotlib_folders()
    except RuntimeError:  # no home folder can be determined
        folders = []
    if folders and all(_writable_folder(folder) for folder in folders):
        return
    user = os.getuid() if hasattr(os, "getuid") else "user"  # Windows: TEMP is per user
    fallback = Path(tempfile.gettempdir()) / f"cnn-viz-matplotlib-{user}"
    if not _writable_folder(fallback):
        try:
            fallback = tempfile.mkdtemp(prefix="cnn-viz-matplotlib-")
        except OSError:  # no writable temporary folder either: matplotlib warns itself
            return
    os.environ["MPLCONFIGDIR"] = str(fallback)


_ensure_writable_config_folder()
warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)

import matplotlib  # noqa: E402 -- after the setup above, on purpose
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

__all__ = ["Figure", "Patch", "Rectangle", "matplotlib"]


def write_figure(figure, path, tight=True):
    """Save a figure (see :func:`save_figure`), tell the user where it went, return ``path``."""
    print(f"wrote {save_figure(figure, path, tight=tight)}")
    return path


def save_figure(figure, path, dpi=120, tight=True):
    """Write a ``matplotlib.figure.Figure`` to a PNG atomically.

    The project builds figures as plain ``Figure`` objects, not through pyplot, so no GUI
    backend is touched and nothing needs closing. Returns ``path``.

    Args:
        tight: crop the page to what is drawn on it, plus 0.1 in. matplotlib finds that box by
            drawing the figure once more, every label and image included; a figure laid out
            to its edges in inches (the feature maps) is saved as it is, in one draw.
    """
    with atomic_open(path) as file:
        figure.savefig(file, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return path
