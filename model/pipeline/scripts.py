"""Running a method script inside the report's process: its output into the report's log, and
what it wrote and noted back as data."""
import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

from model.cli.running import Terminated

INTERRUPTED, TERMINATED = 130, 143  # the exit codes of model.cli.run after Ctrl-C, SIGTERM


@dataclass
class ScriptRun:
    """What one script call did."""

    command: str
    code: int
    figures: list  # PNG paths it wrote, in order
    seconds: float
    errors: str  # what it printed on stderr
    notes: list  # what it left out and why, which path it took (model.runtime.notes)


def run_script(module, argv, log):
    """Run a script's ``main`` in this process with its output captured into ``log``; the
    figures are the PNGs its command returned as written, the notes those it gave.

    Raises:
        KeyboardInterrupt (or ``Terminated``): the script was stopped by Ctrl-C (SIGTERM), so
            the report stops too, at once; the message is the script's last line.
    """
    stdout, stderr, written, notes = io.StringIO(), io.StringIO(), [], []
    started = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = module.main(argv, written, notes)
    seconds = time.perf_counter() - started
    # Progress bars rewrite their line with carriage returns: keep each line's final state.
    errors = "\n".join(line.rsplit("\r", 1)[-1] for line in stderr.getvalue().splitlines())
    command = f"python {module.__name__}.py {' '.join(argv)}"
    log.write(f"$ {command}\n{stdout.getvalue()}{errors}\n(exit code {code}, {seconds:.1f} s)"
              "\n\n")
    if code == INTERRUPTED:
        raise KeyboardInterrupt(last_line(errors))
    if code == TERMINATED:
        raise Terminated("SIGTERM", last_line(errors).split(" (terminated by")[0])
    figures = [Path(path) for path in written if Path(path).suffix == ".png"]
    return ScriptRun(command, code, figures, seconds, errors, notes)


def last_line(text):
    """The last non-empty line of a script's stderr: its error message, without "error: "."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no message (see log.txt)"


def run_section(section, context, scripts, common, out, log, warn):
    """Run one section's scripts into ``out/<section>``; a JSON-ready result.

    Args:
        scripts: script name -> module (the report imports the scripts; ``model`` does not).
        common: the flags every script gets (model, data, device, seed).
        warn: called with a line for the terminal when a script fails.
    """
    result = {"name": section.name, "figures": [], "seconds": 0.0, "failed": [],
              "notes": [], "commands": []}
    for name, argv in section.commands(context):
        script = run_script(scripts[name], common + ["--out", str(out / section.name)] + argv,
                            log)
        result["commands"].append(script.command)
        result["figures"] += [Path(f).relative_to(out).as_posix() for f in script.figures]
        result["seconds"] += script.seconds
        result["notes"] += [note for note in script.notes if note not in result["notes"]]
        if script.code != 0:
            result["failed"].append(last_line(script.errors))
            warn(f"{section.name}: failed: {last_line(script.errors)}")
    return result
