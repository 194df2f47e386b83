"""What a command tells its user beside its outputs: which path it took, what it left out.

A note is printed as one ``note: ...`` line (on stderr unless the script says otherwise) and
handed, as data, to whoever collects the notes of the command running now (``collecting``:
``model.cli.running.run`` collects them for a caller such as ``visualize_all.py``, which puts
them under the script's section of the report), so that no caller has to pick them out of the
printed text.
"""
import sys
from contextlib import contextmanager

_collectors = []  # the lists of the commands running now, outermost first


def note(text, stream=None):
    """Print ``note: text`` on ``stream`` (default: stderr) and add ``text`` to every list that
    is collecting notes now, once."""
    print(f"note: {text}", file=stream or sys.stderr)
    for notes in _collectors:
        if text not in notes:
            notes.append(text)


@contextmanager
def collecting(notes):
    """While the block runs, every :func:`note` is appended to the list ``notes`` too (None:
    collect nothing)."""
    if notes is None:
        yield
        return
    _collectors.append(notes)
    try:
        yield
    finally:
        _collectors.remove(notes)
