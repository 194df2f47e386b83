"""Running a script's command: one-line errors, Ctrl-C and SIGTERM, several processes.

Every script follows the same contract: problems with the user's input raise :class:`UserError`,
and :func:`run` turns them, and any unexpected exception, into one line on stderr and exit code
2 (a traceback only with ``--debug``); Ctrl-C prints one line and exits 130, SIGTERM (and
SIGHUP) exits 143 after the same clean-up. Argument errors found by argparse follow the same
rule (``model.cli.arguments``).
"""
import os
import signal
import sys
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch.distributed as dist

from model.errors import UserError
from model.nets.architectures import architecture_list
from model.runtime import distributed
from model.runtime.device import keep_freed_memory, resolve_device
from model.runtime.files import os_reason


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same clean-up runs (temporary files
    removed, the last good checkpoint kept)."""

    def __init__(self, signal_name, note=""):
        super().__init__(note)
        self.signal_name = signal_name


@contextmanager
def terminate_like_ctrl_c():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Python runs a signal handler between any two bytecodes, also inside a finalizer (a
    ``__del__``, a weakref callback run by the garbage collector), where an exception cannot
    propagate: Python would print it as "Exception ignored in ..." with a traceback and go on as
    if no signal had come. So while the block runs, an interruption (Ctrl-C too) that lands in
    a finalizer is kept without a word and raised again a moment later, once the finalizer has
    returned, or when the block ends, whichever comes first (seen under torchrun: the SIGTERM
    that stops the other processes when one died landed in a WeakSet callback).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(number, frame):
        raise Terminated(signal.Signals(number).name)

    numbers = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {number: signal.signal(number, stop) for number in numbers}
    later = _InterruptionRaisedLater(sys.unraisablehook)
    sys.unraisablehook = later.hook
    try:
        yield
    finally:
        sys.unraisablehook = later.other_hook
        pending = later.take()
        for number, handler in previous.items():
            signal.signal(number, handler)
        if pending == "SIGINT":
            raise KeyboardInterrupt
        if pending:
            raise Terminated(pending)


class _InterruptionRaisedLater:
    """A ``sys.unraisablehook`` that keeps an interruption raised where it could not propagate
    (see :func:`terminate_like_ctrl_c`) and sends its signal again after ``delay_s``; anything
    else goes to ``other_hook``."""

    def __init__(self, other_hook, delay_s=0.05):
        self.other_hook, self.delay_s = other_hook, delay_s
        self.lock = threading.Lock()
        self.pending = self.timer = None

    def hook(self, unraisable):
        if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
            return self.other_hook(unraisable)
        with self.lock:
            if self.pending is None:
                self.pending = getattr(unraisable.exc_value, "signal_name", "SIGINT")
                self.timer = threading.Timer(self.delay_s, self._send_again)
                self.timer.daemon = True
                self.timer.start()

    def _send_again(self):
        with self.lock:
            name, self.pending = self.pending, None
        if name:
            os.kill(os.getpid(), signal.Signals[name])

    def take(self):
        """The signal name of an interruption not sent again yet (None if none), which will
        not be."""
        with self.lock:
            name, self.pending = self.pending, None
        if self.timer is not None:
            self.timer.cancel()
        return name


class Listed(Exception):
    """Raised once ``--layer list`` has printed a net's layers: the script ends with code 0."""


def run(command, args, interrupted=None, written=None, several_processes=False):
    """Call ``command(args)`` and turn every way it can fail into one line on stderr.

    A script's command returns the paths of the files it wrote (figures, JSON, checkpoints),
    in order; they are appended to ``written`` when given, so that a caller such as
    ``visualize_all.py`` learns them without reading the script's printed output.

    Returns 0 on success; 2 after a :class:`UserError` or any other exception, printed as one
    line (with ``--debug`` the exception propagates with its traceback); 130 after Ctrl-C and
    143 after SIGTERM or SIGHUP, printing the interruption's own message if it was raised with
    one, else ``interrupted()`` when given, else "interrupted". Outputs are written
    atomically (``model.runtime.atomic_open``), so a failure, Ctrl-C or SIGTERM never leaves a
    half-written or temporary file.

    Under torchrun a script that can share its work (``several_processes``) joins the process
    group for the command (``model.runtime.distributed``); any other script refuses to run. Every
    process prints its own one line, those other than rank 0 with ``process R of N:`` before
    it; when another process died, the line says so.
    """
    keep_freed_memory()  # every script moves large batches through a net on the CPU
    try:
        if getattr(args, "arch", None) == "list":  # --arch list: the names, nothing run
            print("\n".join(architecture_list()))
            return 0
        with terminate_like_ctrl_c(), _process_group(args, several_processes):
            paths = command(args)
        if written is not None:
            written.extend(paths or [])
    except Listed:  # --layer list printed the layers: nothing more to do
        return 0
    except KeyboardInterrupt as stop:
        if args.debug:
            raise
        note = str(stop) or (interrupted() if interrupted else "interrupted")
        if isinstance(stop, Terminated):
            if distributed.current().several:  # torchrun stops the rest when one process ends
                note = _another_process_ended(note)
            note = f"{note} (terminated by {stop.signal_name})"
        print(f"\n{distributed.current().label()}{note}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop like SIGPIPE
        _silence_stdout()
        return 141
    except Exception as error:  # noqa: BLE001 -- the CLI boundary: no traceback for users
        if args.debug:
            raise
        message = f"error: {describe_error(error)}"
        if distributed.current().several and distributed.is_group_failure(error):
            message = _another_process_ended(interrupted() if interrupted else "")
        print(f"{distributed.current().label()}{message}", file=sys.stderr)
        return 2
    return 0


def _another_process_ended(note):
    """The line of a process that stopped because torchrun's group lost another one, with
    what is kept (``note``, an interruption note without its "interrupted: ")."""
    kept = note.removeprefix("interrupted").removeprefix(":").strip()
    return ("stopped: another process of the group ended (torchrun names it below)"
            + (f"; {kept}" if kept else ""))


def _process_group(args, several_processes):
    """The torchrun process group for a script started by torchrun (none otherwise, and none
    for a script run by another one, which decides what it shares)."""
    if not distributed.launched_by_torchrun() or dist.is_initialized():
        return nullcontext()
    if not several_processes:
        raise UserError(f"{Path(sys.argv[0]).name} runs in one process: start it with python, "
                        "not torchrun (torchrun is for train_cnn.py, max_activation_search.py, "
                        "evaluate_attributions.py and visualize_all.py)")
    return distributed.process_group(resolve_device(args.device))


def _silence_stdout():
    """Point stdout at the null device, so that Python's final flush into the closed pipe
    prints no "Exception ignored" message."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no real file (tests, IDEs)
        pass


def describe_error(error):
    """One line for an exception: a :class:`UserError`'s own message, else what went wrong."""
    if isinstance(error, UserError):
        return " ".join(str(error).split())
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return "out of memory; try a smaller --batch-size or fewer images"
    if isinstance(error, OSError) and error.filename:  # the file system said no
        return f"{error.filename}: {os_reason(error.filename, error)}"
    lines = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
    return f"unexpected {detail} (rerun with --debug for the traceback)"
