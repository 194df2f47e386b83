"""The report's run (``visualize_all.py`` is its command line): train when needed, plan, run
every section's scripts in this process, survey the explorer's gallery, write the page.

Order: the model (trained first when its checkpoint is missing, or with ``--retrain``, with a
snapshot per epoch); the plan (``model.pipeline.planning``: one photo of every kind of work
measured, counts fitted to the budget, printed before any section runs); the test accuracy and
a seeded gallery; the sections; the explorer; ``summary.json`` and ``index.html`` with the
measured time beside each estimate. Under torchrun the processes share the training and the
evaluation, which then runs first; rank 0 alone runs the per-image sections and writes the
report.
"""
import contextlib
import datetime
import io
import json
import subprocess
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.attribution.registry import VARIANT_SEPARATOR
from model.cli.arguments import smoothing_options
from model.cli.method_inputs import (
    DEFAULT_ARCH,
    DEFAULT_DATASET,
    check_weights_flags,
    load_split,
    weights_model,
)
from model.data.datasets import dataset_title
from model.data.sampling import sample_test_images, test_predictions
from model.errors import UserError
from model.evaluation.survey import survey_gallery
from model.figures.curves import plot_training_curve
from model.figures.plotting import save_figure
from model.nets.checkpoint import (
    CheckpointError,
    arch_slug,
    default_checkpoint_path,
    library_versions,
    load_checkpoint,
    load_model,
)
from model.nets.layers import conv_layer_names
from model.pipeline.planning import plan_report
from model.pipeline.scripts import last_line, run_script, run_section
from model.report.explorer import explorer_data, write_explorer
from model.report.page import render_html
from model.report.plans import plan_lines
from model.report.sections import GALLERY_SIZE, SECTION_NAMES, SECTIONS, ReportContext
from model.runtime import distributed
from model.runtime.device import resolve_device, seed_everything
from model.runtime.files import atomic_open, save_json

ROOT = Path(__file__).resolve().parents[2]


def build_report(args, scripts):
    """Write the report of ``args`` (``visualize_all.py``'s); ``scripts``: name -> module."""
    seed_everything(args.seed)
    device = resolve_device(args.device)
    check_report_flags(args)
    out = Path(args.out or f"outputs/report_{args.dataset or 'imagenet'}_{arch_slug(args.arch)}")
    sections = [s for s in SECTIONS if args.methods is None or s.name in args.methods]
    if not distributed.current().main:
        return share_report_work(args, sections, scripts, out)
    # Under torchrun the evaluation, the section the other processes share, runs first, so
    # that they do not wait for the sections rank 0 runs alone.
    running = (sorted(sections, key=lambda section: section.name != "evaluation")
               if distributed.current().several else sections)
    times, results, stopped = {}, [], None
    # The bar is closed on any error too, so that the error is the terminal's last line.
    with (atomic_open(out / "log.txt") as raw_log,
          tqdm(total=len(sections) + 1 + (not args.no_explorer), desc="report",
               unit="step") as progress):
        log = io.TextIOWrapper(raw_log, encoding="utf-8")
        trained = (None if args.weights
                   else train_if_needed(args, report_checkpoint(args), scripts, log))
        if trained is not None:
            times["training"] = trained
        started = time.perf_counter()  # what every script repeats: the net, its layers, data
        model, info, checkpoint, common = report_model(args, device)
        test_set = load_split(info, "test", args)
        layers = conv_layer_names(model)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        predictions = test_predictions(
            model, test_set, device, progress=lambda done, total: progress.set_postfix_str(
                f"accuracy: {done}/{total} test images"))
        accuracy = (predictions == test_set.labels).double().mean().item()
        gallery, _ = sample_test_images(model, test_set, GALLERY_SIZE, args.seed, device,
                                        wrong_share=0.34, predictions=predictions)
        times["accuracy"] = time.perf_counter() - started
        started = time.perf_counter()
        progress.set_postfix_str("plan: measuring one photo per kind of work")
        with distributed.alone():  # rank 0 measures alone; the others wait for its flags
            record = plan_report(args, model, info, test_set, device, layers, loaded,
                                 times["accuracy"], sections)
        distributed.gather(record["flags"])  # to the other processes' evaluation
        times["plan"] = time.perf_counter() - started
        for line in plan_lines(record):
            tqdm.write(line)
        log.write("\n".join(plan_lines(record)) + "\n\n")
        context = ReportContext(gallery.tolist(), layers, record["flags"],
                                smoothing_flags(args))
        if checkpoint is not None:
            title = f"{checkpoint['arch']} on {dataset_title(info.name, args.data_dir)}"
            save_figure(plot_training_curve(checkpoint["history"], title),
                        out / "training_curve.png")
        progress.update()
        for section in running:
            progress.set_postfix_str(section.name)
            try:
                with (contextlib.nullcontext() if section.name == "evaluation"
                      else distributed.alone()):
                    results.append(run_section(section, context, scripts, common, out, log,
                                               tqdm.write))
            except KeyboardInterrupt as stop:  # keep what is finished, say what is not
                stopped = (section, stop)
                log.write(f"stopped during {section.name}: {stop}\n")
                break
            times[section.name] = results[-1]["seconds"]
            progress.update()
        if not args.no_explorer and not stopped:
            started = time.perf_counter()
            with distributed.alone():
                write_report_explorer(args, model, info, test_set, predictions, device,
                                      checkpoint, out, record, "evaluation" in times,
                                      progress)
            times["explorer"] = time.perf_counter() - started
            progress.update()
        measured = {name: seconds for name, seconds in times.items() if name != "training"}
        for line in plan_lines(record, measured):
            tqdm.write(line)
        log.write("\n".join(plan_lines(record, measured)) + "\n")
        log.flush()
        log.detach()  # atomic_open closes the file

    results.sort(key=lambda result: SECTION_NAMES.index(result["name"]))
    finished = [s for s in sections if s.name in {result["name"] for result in results}]
    evaluation = None
    if any(s.name == "evaluation" for s in finished):
        evaluation = read_json(out / "evaluation" / "evaluation.json")
    summary = report_summary(args, device, info, checkpoint, accuracy, len(test_set), context,
                             times, results, evaluation)
    summary["plan"] = {**record, "measured": measured}
    if stopped:
        summary["interrupted_during"] = stopped[0].name
    if "explorer" in times:
        summary["explorer"] = "explorer.html"
    save_json(summary, out / "summary.json")
    with atomic_open(out / "index.html") as page:
        page.write(render_html(summary, finished, results, evaluation).encode())
    print(f"wrote {out / 'index.html'}, {out / 'summary.json'} and {out / 'log.txt'}")
    if stopped:
        section, stop = stopped
        stop.args = (f"interrupted during {section.name}: {out / 'index.html'} shows the "
                     f"{len(results)} finished section(s) and says so; run the same command "
                     "again for the whole report",)
        raise stop
    if any(result["failed"] for result in results):
        raise UserError("some sections failed (see above and log.txt); the report marks them")


def check_report_flags(args):
    """Refuse flags that contradict each other; fill in the default dataset and net."""
    if args.weights and (args.retrain or args.epochs or args.max_train_images):
        raise UserError("--weights are reported on as they are; --retrain, --epochs and "
                        "--max-train-images are for training a checkpoint")
    check_weights_flags(args)
    if args.weights and args.dataset is None:  # ImageNet input: no test split here
        raise UserError("the report needs test images: give --dataset imagefolder --data-dir "
                        "DIR with your images in DIR/val/<class>/ (or the --dataset the "
                        "weights were trained on)")
    if args.full and args.budget is not None:
        raise UserError("--full runs without a budget: give --full or --budget, not both")
    if not args.weights:
        args.dataset, args.arch = args.dataset or DEFAULT_DATASET, args.arch or DEFAULT_ARCH


def write_report_explorer(args, model, info, test_set, predictions, device, checkpoint, out,
                          record, evaluated, progress):
    """Survey the plan's explorer photos and write ``explorer.html`` with its data."""
    arch = checkpoint["arch"] if checkpoint else args.arch
    smoothing = smoothing_options(args)
    survey = survey_gallery(model, info, test_set, predictions, device,
                            count=record["counts"]["explorer photos"], seed=args.seed,
                            options={option.replace("-", "_"): True for option in smoothing},
                            progress=lambda method, layer: progress.set_postfix_str(
                                f"explorer: {method}" + (f" at {layer}" if layer else "")),
                            scorecam_channels=record["explorer_scorecam_channels"])
    evaluation_file = out / "evaluation" / "evaluation.json"  # this run's, if it ran
    scores = (read_json(evaluation_file)["scores"] if evaluated and evaluation_file.is_file()
              else {})
    # the explorer's CAM maps are smoothed as the evaluation's rows are
    scores = {VARIANT_SEPARATOR.join(part for part in name.split(VARIANT_SEPARATOR)
                                     if part not in smoothing): row
              for name, row in scores.items()}
    title = f"{arch} on {dataset_title(info.name, args.data_dir)}"
    write_explorer(out, explorer_data(title, info, survey, scores, smoothing))


def unfinished(checkpoint):
    """Whether ``checkpoint`` is a training run stopped before its last epoch (Ctrl-C)."""
    try:
        stored = load_checkpoint(checkpoint)
    except CheckpointError:
        return False  # loading it for the report says what is wrong with it
    return stored["epoch"] < (stored.get("epochs") or 0)


def train_if_needed(args, checkpoint, scripts, log):
    """Train into ``checkpoint`` (with per-epoch snapshots) when it is missing or --retrain,
    and finish the training of an interrupted run.

    Returns:
        the seconds training took, or None when the checkpoint was used as it is.

    Raises:
        KeyboardInterrupt: Ctrl-C during training, with a message that says how to continue.
    """
    resume = not args.retrain and checkpoint.exists() and unfinished(checkpoint)
    if checkpoint.exists() and not args.retrain and not resume:
        return None
    argv = ["--dataset", args.dataset, "--arch", args.arch, "--data-dir", args.data_dir,
            "--device", args.device, "--seed", str(args.seed), "--out", str(checkpoint),
            "--save-every-epoch", "--no-progress"] + (["--resume"] if resume else [])
    for flag, value in (("--epochs", args.epochs), ("--max-train-images", args.max_train_images),
                        ("--image-size", args.image_size), ("--workers", args.workers)):
        if value is not None:
            argv += [flag, str(value)]
    verb = "continuing the interrupted training of" if resume else "training"
    tqdm.write(f"{verb} {args.arch} on {args.dataset} into {checkpoint}")
    try:
        training = run_script(scripts["train_cnn"], argv, log)
    except KeyboardInterrupt as stop:
        again = ("rerun without --retrain to continue it" if args.retrain
                 else "run the same command again to continue it")
        note = (f"interrupted during training: {checkpoint} keeps the last finished epoch; "
                f"{again}" if checkpoint.is_file() else
                "interrupted during training, before its first epoch ended: nothing was "
                "saved")
        stop.args = (note,)
        raise
    if training.code != 0:
        raise UserError(f"training failed: {last_line(training.errors)}")
    return training.seconds


def report_model(args, device):
    """The model to report on, with what the report needs to know about it.

    Returns:
        (model, DatasetInfo, checkpoint dict or None for ``--weights``, the flags that give
        every script the same model and data).
    """
    shared = ["--data-dir", args.data_dir, "--device", args.device, "--seed", str(args.seed),
              "--workers", str(args.workers)]
    if args.weights:
        model, info = weights_model(args, device)
        flags = ["--weights", args.weights, "--arch", args.arch, "--dataset", args.dataset]
        for flag, value in (("--class-names", args.class_names),
                            ("--image-size", args.image_size)):
            flags += [flag, str(value)] if value else []
        return model, info, None, flags + shared
    checkpoint_file = report_checkpoint(args)
    expected = () if args.checkpoint else (args.dataset, args.arch)
    model, info, checkpoint = load_model(checkpoint_file, device, *expected)
    return model, info, checkpoint, ["--checkpoint", str(checkpoint_file)] + shared


def report_checkpoint(args):
    return Path(args.checkpoint or default_checkpoint_path(args.dataset, args.arch))


def smoothing_flags(args):
    """The CAM options the report passes on to the CAM section and the evaluation."""
    return [f"--{option}" for option in smoothing_options(args)]


def share_report_work(args, sections, scripts, out):
    """What a process other than rank 0 does under torchrun: its part of the training, if the
    report trains, and of the evaluation (with the plan rank 0 makes: the same measurement is
    not repeated here, so the evaluation gets its counts from the flags alone). Rank 0 writes
    the whole report (and its log)."""
    log = io.StringIO()
    if not args.weights:
        train_if_needed(args, report_checkpoint(args), scripts, log)
    flags = distributed.gather(None)[0]  # rank 0's plan
    for section in sections:
        if section.name == "evaluation":
            _, _, _, common = report_model(args, resolve_device(args.device))
            run_section(section, ReportContext([], [], flags, smoothing_flags(args)), scripts,
                        common, out, log, lambda line: None)
    return []


def read_json(path):
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def git_commit():
    """The repository's commit, with ``+dirty`` for uncommitted changes, or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def report_summary(args, device, info, checkpoint, accuracy, test_count, context, times,
                   results, evaluation):
    """Everything needed to read and reproduce the report, JSON-ready (``checkpoint``: None
    for ``--weights``)."""
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": args.command,
        "git_commit": git_commit(), "versions": library_versions(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})"
                                 if device.type == "cuda" else ""),
        "dataset": info.name, "dataset_title": dataset_title(info.name, args.data_dir),
        "arch": args.arch if checkpoint is None else checkpoint["arch"],
        "checkpoint": None if checkpoint is None else str(report_checkpoint(args)),
        "weights": args.weights, "test_accuracy": accuracy, "test_images": test_count,
        "epochs": None if checkpoint is None else checkpoint["epoch"],
        "training_args": None if checkpoint is None else checkpoint.get("train_args"),
        "report_args": vars(args),
        "seed": args.seed, "gallery_test_indices": context.gallery,
        "seconds": times, "sections": results, "evaluation": evaluation,
    }
