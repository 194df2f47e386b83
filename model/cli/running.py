"""Running a script's command: one-line errors, Ctrl-C and SIGTERM, several processes.

Every script follows the same contract: problems with the user's input raise :class:`UserError`,
and :func:`run` turns them, and any unexpected exception, into one line on stderr and exit code
2 (a traceback only with ``--debug``); Ctrl-C prints one line and exits 130, SIGTERM (and
SIGHUP) exits 143 after the same clean-up. Argument errors found by argparse follow the same
rule (``model.cli.arguments``).
"""
import _thread
import ctypes
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
from model.runtime.notes import collecting


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the same clean-up runs (temporary files
    removed, the last good checkpoint kept)."""

    def __init__(self, signal_name, note=""):
        super().__init__(note)
        self.signal_name = signal_name


@contextmanager
def terminate_like_ctrl_c():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread
    (SIGHUP not under ``nohup``, which starts the process with it ignored), and Ctrl-C raises
    KeyboardInterrupt even in a process started with SIGINT ignored.

    A shell script starts a command with ``&`` with SIGINT ignored (POSIX, for want of job
    control), and Python then leaves Ctrl-C and ``kill -INT`` without effect: a report started
    that way went on to its end and exited 0. So the block sets Python's own handler.

    Python runs a signal handler between any two bytecodes, also inside a finalizer (a
    ``__del__``, a weakref callback run by the garbage collector), where an exception cannot
    propagate: Python would print it as "Exception ignored in ..." with a traceback and go on as
    if no signal had come. So while the block runs, an interruption (Ctrl-C too) that lands in
    a finalizer is kept without a word and raised again a moment later, once the finalizer has
    returned, or when the block ends, whichever comes first (seen under torchrun: the SIGTERM
    that stops the other processes when one died landed in a WeakSet callback). Either way it
    is raised inside the block, also when the block is a script's run inside another one's (the
    report's training): none is left for after it, and none is dropped.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(number, frame):
        raise Terminated(signal.Signals(number).name)

    numbers = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    # a SIGHUP ignored from the start is nohup's doing: the run must outlive its terminal
    numbers = [number for number in numbers if number == signal.SIGTERM
               or signal.getsignal(number) != signal.SIG_IGN]
    previous = {number: signal.signal(number, stop) for number in numbers}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started by "command &"
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    later = _InterruptionRaisedLater(sys.unraisablehook)
    sys.unraisablehook = later.hook
    try:
        yield
    except BaseException as error:
        later.end(previous, error)
        raise
    later.end(previous)


class _InterruptionRaisedLater:
    """A ``sys.unraisablehook`` that keeps an interruption raised where it could not propagate
    (see :func:`terminate_like_ctrl_c`) and sends its signal again to the main thread after
    ``delay_s``; anything else goes to ``other_hook``."""

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
        with self.lock:  # sent under the lock: once end() has the lock, it was sent or never is
            name, self.pending = self.pending, None
            if name:
                _signal_main_thread(signal.Signals[name])

    def end(self, previous, ending=None):
        """Put back the hook and the signal handlers (``previous``: number -> handler) when the
        block ends, with the exception ``ending`` if any, and raise the interruption kept or
        already sent again, unless the block ends with an interruption of its own.

        An interruption sent again just before is raised here, not at some later bytecode:
        after the block, in the code of the script that ran this one (the report, after its
        training), it would come too late.
        """
        sys.unraisablehook = self.other_hook
        with self.lock:
            kept, self.pending = self.pending, None
        if self.timer is not None:
            self.timer.cancel()
        try:
            _handle_signals_sent()
        except KeyboardInterrupt:
            if not isinstance(ending, KeyboardInterrupt):
                raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if kept == "SIGINT" and not isinstance(ending, KeyboardInterrupt):
            raise KeyboardInterrupt
        if kept and not isinstance(ending, KeyboardInterrupt):
            raise Terminated(kept)


def _signal_main_thread(number):
    """Send signal ``number`` to the main thread, where it also ends a sleep or a wait."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, number)
    else:  # Windows: raised at the main thread's next bytecode
        _thread.interrupt_main(number)


def _handle_signals_sent():
    """Run now, in the main thread, the handler of a signal already sent to it: a system call
    makes the kernel deliver the signal on its return, and Python's check then runs the
    handler (which raises the interruption here)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, [])  # blocks nothing: only the system call
    ctypes.pythonapi.PyErr_CheckSignals()


class Listed(Exception):
    """Raised once ``--layer list`` has printed a net's layers: the script ends with code 0."""


def run(command, args, interrupted=None, written=None, several_processes=False, notes=None):
    """Call ``command(args)`` and turn every way it can fail into one line on stderr.

    A script's command returns the paths of the files it wrote (figures, JSON, checkpoints),
    in order; they are appended to ``written`` when given, so that a caller such as
    ``visualize_all.py`` learns them without reading the script's printed output; likewise
    every note the command gives (``model.runtime.notes.note``) is appended to ``notes``.

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
        with (terminate_like_ctrl_c(), _process_group(args, several_processes),
              collecting(notes)):
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
