"""One command, one report folder: every method on one model, and how far to trust each map.

    python visualize_all.py --dataset shapes                  # trains first if needed, ~90 s
    python visualize_all.py --dataset shapes --methods cam occlusion evaluation
    python visualize_all.py --dataset mnist --arch simple --data-dir data --num-images 200
    python visualize_all.py --dataset shapes --retrain        # train anew, with snapshots
    torchrun --nproc_per_node 2 visualize_all.py --dataset shapes  # training and evaluation
                                                                    # shared by 2 processes

Trains the model when its checkpoint is missing (or with ``--retrain``, keeping a snapshot per
epoch for the feature-evolution figures), picks a fixed, seeded gallery of test images (right
and wrong decisions, several classes), runs each method script with its own defaults on them,
scores every attribution method (evaluate_attributions.py) on ``--num-images`` test images,
and writes ``outputs/report_<dataset>_<arch>/``: ``index.html`` (one offline page), the PNGs
in a folder per method, ``summary.json`` and ``log.txt`` (everything the scripts printed).

Under torchrun the processes share the training (when the report trains) and the evaluation,
which then runs first; rank 0 alone runs the per-image sections and writes the report.
"""
import contextlib
import datetime
import io
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import class_activation_maps
import deconvnet
import evaluate_attributions
import feature_maps
import gradient_ascent
import max_activation_search
import occlusion_sensitivity
import train_cnn
from model.attribution.registry import VARIANT_SEPARATOR
from model.cli.arguments import (
    ArgumentParser,
    common_parser,
    positive_int,
    smoothing_options,
    smoothing_parser,
)
from model.cli.method_inputs import (
    DEFAULT_ARCH,
    DEFAULT_DATASET,
    add_weights_flags,
    check_weights_flags,
    load_split,
    weights_model,
)
from model.cli.running import Terminated, run
from model.data.sampling import sample_test_images, test_predictions
from model.errors import UserError
from model.evaluation.survey import default_image_counts, survey_gallery
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
from model.report.explorer import explorer_data, write_explorer
from model.report.page import render_html
from model.runtime import distributed
from model.runtime.device import resolve_device, seed_everything
from model.runtime.files import atomic_open, save_json

ROOT = Path(__file__).resolve().parent
GALLERY_SIZE = 6


@dataclass
class Section:
    """One method's part of the report: what to run and the two lines a reader needs."""

    name: str
    title: str
    paper: str
    shows: str
    look_for: str
    commands: object  # function(ReportContext) -> list of (script module, argv)


@dataclass
class ReportContext:
    """What every section is run with."""

    gallery: list  # test indices: misclassified first, then correct
    layers: list  # the conv layers, in order
    num_images: int
    smoothing: list = field(default_factory=list)  # --aug-smooth, --eigen-smooth: CAM flags


def _index_flags(indices):
    return ["--index", *map(str, indices)]


def _occlusion(context):
    # One wrong and one right decision: the map of a mistake shows what misled the net.
    chosen = [context.gallery[0], context.gallery[-1]]
    return [(occlusion_sensitivity, _index_flags(chosen))]


def _cam(context):
    return [(class_activation_maps, _index_flags(context.gallery) + ["--gallery", "0"]
             + context.smoothing)]


def _deconvnet(context):
    return [(deconvnet, _index_flags(context.gallery[-1:]))]


def _max_activation(context):
    return [(max_activation_search, ["--layer", context.layers[-1], "--channels", "0-5",
                                     "--project"])]


def _feature_maps(context):
    return [(feature_maps, _index_flags(context.gallery[-1:]))]


def _gradient_ascent(context):
    middle = context.layers[len(context.layers) // 2]
    return [(gradient_ascent, []), (gradient_ascent, ["--layer", middle, "--filters", "0-7"])]


def _evaluation(context):
    return [(evaluate_attributions, ["--num-images", str(context.num_images)]
             + context.smoothing)]


SECTIONS = (
    Section("occlusion", "Occlusion sensitivity", "Zeiler & Fergus 2014, sec. 4.2",
            "How the probability of the explained class changes as a patch (a blurred copy of "
            "the image) slides over it, and which class wins at each patch position.",
            "A drop concentrated on the object means the net uses the object; a drop on the "
            "background of a mistake shows what misled it.", _occlusion),
    Section("cam", "Class activation maps (CAM family)",
            "Zhou et al. 2016; Selvaraju et al. 2017; Chattopadhay et al. 2018; Wang et al. "
            "2020 (Score-CAM); Jiang et al. 2021 (LayerCAM) and more",
            "Where in the last conv layer's maps the evidence for the class lies, by each way "
            "of weighting the channels; then one image with every class as the target.",
            "Methods that agree point at the object; a map that barely changes between "
            "classes explains the image, not the decision.", _cam),
    Section("deconvnet", "DeconvNet projections", "Zeiler & Fergus 2014, sec. 2.1, Fig. 2",
            "For each conv layer, the strongest channels of one image, projected back to "
            "pixels through the switches of the max pools, beside the receptive-field crop.",
            "Early layers respond to edges and colours, deeper ones to parts and whole shapes; "
            "the projection shows which pixels made the unit fire.", _deconvnet),
    Section("max_activation", "Top activating test images", "Zeiler & Fergus 2014, Fig. 2",
            "For channels of the last conv layer, the nine test images that excite each most, "
            "cropped to the receptive field of the maximum, beside their projections (the "
            "DeconvNet's; guided backprop where no max pool lies below the layer).",
            "A channel whose nine crops share one pattern has learned that pattern; mixed "
            "crops suggest a unit that answers to several things.", _max_activation),
    Section("feature_maps", "Filters, feature maps, dead filters and training evolution",
            "Zeiler & Fergus 2014, sec. 4 and Fig. 4",
            "The learned weights, every channel's response to one image, how often each "
            "channel fires on test images, and the maps after each training epoch.",
            "Smooth, oriented first-layer filters and few dead channels mean healthy training; "
            "the evolution shows features sharpening as epochs pass.", _feature_maps),
    Section("gradient_ascent", "Class and filter model visualization",
            "Simonyan et al. 2014, sec. 2; Erhan et al. 2009",
            "Images optimized from scratch to maximize a class score (titled with the "
            "probability reached) or a filter's mean activation.",
            "Recognizable parts of the class mean the net learned the object; texture-only "
            "images mean it keys on texture.", _gradient_ascent),
    Section("evaluation", "How far to trust each map",
            "Petsiuk et al. 2018; Zhang et al. 2016; Adebayo et al. 2018",
            "Every attribution method scored on the same test images: deletion / insertion "
            "AUC, pointing game, model randomization, agreement and cost, against a random "
            "map.",
            "Good maps beat the random row on every faithfulness column and decorrelate when "
            "the weights are randomized; a map that stays similar ignores the model.",
            _evaluation),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)


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


@dataclass
class ScriptRun:
    """What one script call did."""

    command: str
    code: int
    figures: list  # PNG paths it wrote, in order
    seconds: float
    errors: str  # what it printed on stderr
    notes: list  # its "note: ..." lines: what it left out and why, which path it took


INTERRUPTED, TERMINATED = 130, 143  # the exit codes of model.cli.run after Ctrl-C, SIGTERM


def run_script(module, argv, log):
    """Run a script's ``main`` in this process with its output captured into ``log``; the
    figures are the PNGs its command returned as written.

    Raises:
        KeyboardInterrupt (or ``Terminated``): the script was stopped by Ctrl-C (SIGTERM), so
            the report stops too, at once; the message is the script's last line.
    """
    stdout, stderr, written = io.StringIO(), io.StringIO(), []
    started = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = module.main(argv, written)
    seconds = time.perf_counter() - started
    printed = stdout.getvalue()
    # Progress bars rewrite their line with carriage returns: keep each line's final state.
    errors = "\n".join(line.rsplit("\r", 1)[-1] for line in stderr.getvalue().splitlines())
    command = f"python {module.__name__}.py {' '.join(argv)}"
    log.write(f"$ {command}\n{printed}{errors}\n(exit code {code}, {seconds:.1f} s)\n\n")
    if code == INTERRUPTED:
        raise KeyboardInterrupt(last_line(errors))
    if code == TERMINATED:
        raise Terminated("SIGTERM", last_line(errors).split(" (terminated by")[0])
    figures = [Path(path) for path in written if Path(path).suffix == ".png"]
    notes = [line.removeprefix("note: ") for line in (printed + "\n" + errors).splitlines()
             if line.startswith("note: ")]
    return ScriptRun(command, code, figures, seconds, errors, list(dict.fromkeys(notes)))


def last_line(text):
    """The last non-empty line of a script's stderr: its error message, without "error: "."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no message (see log.txt)"


def unfinished(checkpoint):
    """Whether ``checkpoint`` is a training run stopped before its last epoch (Ctrl-C)."""
    try:
        stored = load_checkpoint(checkpoint)
    except CheckpointError:
        return False  # loading it for the report says what is wrong with it
    return stored["epoch"] < (stored.get("epochs") or 0)


def train_if_needed(args, checkpoint, log):
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
        training = run_script(train_cnn, argv, log)
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


def run_section(section, context, common, out, log):
    """Run one section's scripts into ``out/<section>``; a JSON-ready result."""
    result = {"name": section.name, "figures": [], "seconds": 0.0, "failed": [],
              "notes": [], "commands": []}
    for module, argv in section.commands(context):
        script = run_script(module, common + ["--out", str(out / section.name)] + argv, log)
        result["commands"].append(script.command)
        result["figures"] += [Path(f).relative_to(out).as_posix() for f in script.figures]
        result["seconds"] += script.seconds
        result["notes"] += [note for note in script.notes if note not in result["notes"]]
        if script.code != 0:
            result["failed"].append(last_line(script.errors))
            tqdm.write(f"{section.name}: failed: {last_line(script.errors)}")
    return result


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


def build_report(args):
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if args.weights and (args.retrain or args.epochs or args.max_train_images):
        raise UserError("--weights are reported on as they are; --retrain, --epochs and "
                        "--max-train-images are for training a checkpoint")
    check_weights_flags(args)
    if args.weights and args.dataset is None:  # ImageNet input: no test split here
        raise UserError("the report needs test images: give --dataset imagefolder --data-dir "
                        "DIR with your images in DIR/val/<class>/ (or the --dataset the "
                        "weights were trained on)")
    if not args.weights:
        args.dataset, args.arch = args.dataset or DEFAULT_DATASET, args.arch or DEFAULT_ARCH
    out = Path(args.out or f"outputs/report_{args.dataset or 'imagenet'}_{arch_slug(args.arch)}")
    sections = [s for s in SECTIONS if args.methods is None or s.name in args.methods]
    if not distributed.current().main:
        return share_report_work(args, sections, out)
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
        trained = None if args.weights else train_if_needed(args, report_checkpoint(args), log)
        if trained is not None:
            times["training"] = trained
        model, info, checkpoint, common = report_model(args, device)
        test_set = load_split(info, "test", args)
        predictions = test_predictions(
            model, test_set, device, progress=lambda done, total: progress.set_postfix_str(
                f"accuracy: {done}/{total} test images"))
        accuracy = (predictions == test_set.labels).double().mean().item()
        gallery, _ = sample_test_images(model, test_set, GALLERY_SIZE, args.seed, device,
                                        wrong_share=0.34, predictions=predictions)
        context = ReportContext(gallery.tolist(), conv_layer_names(model),
                                evaluation_images(args, info), smoothing_flags(args))
        if checkpoint is not None:
            title = f"{checkpoint['arch']} on {info.name}"
            save_figure(plot_training_curve(checkpoint["history"], title),
                        out / "training_curve.png")
        progress.update()
        for section in running:
            progress.set_postfix_str(section.name)
            try:
                with (contextlib.nullcontext() if section.name == "evaluation"
                      else distributed.alone()):
                    results.append(run_section(section, context, common, out, log))
            except KeyboardInterrupt as stop:  # keep what is finished, say what is not
                stopped = (section, stop)
                log.write(f"stopped during {section.name}: {stop}\n")
                break
            times[section.name] = results[-1]["seconds"]
            progress.update()
        if not args.no_explorer and not stopped:
            started = time.perf_counter()
            with distributed.alone():
                arch = checkpoint["arch"] if checkpoint else args.arch
                smoothing = smoothing_options(args)
                survey = survey_gallery(model, info, test_set, predictions, device,
                                        count=args.explorer_images, seed=args.seed,
                                        options={option.replace("-", "_"): True
                                                 for option in smoothing},
                                        progress=lambda method, layer: progress.set_postfix_str(
                                            f"explorer: {method}"
                                            + (f" at {layer}" if layer else "")))
                evaluated = out / "evaluation" / "evaluation.json"  # this run's, if it ran
                scores = (read_json(evaluated)["scores"] if "evaluation" in times
                          and evaluated.is_file() else {})
                # the explorer's CAM maps are smoothed as the evaluation's rows are
                scores = {VARIANT_SEPARATOR.join(part for part in name.split(VARIANT_SEPARATOR)
                                                 if part not in smoothing): row
                          for name, row in scores.items()}
                write_explorer(out, explorer_data(f"{arch} on {info.name}", info, survey,
                                                  scores, smoothing))
            times["explorer"] = time.perf_counter() - started
            progress.update()
        log.flush()
        log.detach()  # atomic_open closes the file

    results.sort(key=lambda result: SECTION_NAMES.index(result["name"]))
    finished = [s for s in sections if s.name in {result["name"] for result in results}]
    evaluation = None
    if any(s.name == "evaluation" for s in finished):
        evaluation = read_json(out / "evaluation" / "evaluation.json")
    summary = report_summary(args, device, info, checkpoint, accuracy, len(test_set), context,
                             times, results, evaluation)
    if stopped:
        summary["interrupted_during"] = stopped[0].name
    if "explorer" in times:
        summary["explorer"] = "explorer.html"
    save_json(summary, out / "summary.json")
    with atomic_open(out / "index.html") as page:
        page.write(render_html(summary, finished, results, evaluation).encode())
    print(f"wrote {out / 'index.html'}, {out / 'summary.json'} and {out / 'log.txt'}")
    print("seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in times.items())
          + f"; total {sum(times.values()):.1f}")
    if stopped:
        section, stop = stopped
        stop.args = (f"interrupted during {section.name}: {out / 'index.html'} shows the "
                     f"{len(results)} finished section(s) and says so; run the same command "
                     "again for the whole report",)
        raise stop
    if any(result["failed"] for result in results):
        raise UserError("some sections failed (see above and log.txt); the report marks them")


def smoothing_flags(args):
    """The CAM options the report passes on to the CAM section and the evaluation."""
    return [f"--{option}" for option in smoothing_options(args)]


def evaluation_images(args, info):
    """How many test images the evaluation scores: ``--num-images``, or the default for the
    images' size (``default_image_counts``: 100 up to 64 px, 32 above)."""
    if args.num_images is not None:
        return args.num_images
    return default_image_counts(info.image_size)[1]


def share_report_work(args, sections, out):
    """What a process other than rank 0 does under torchrun: its part of the training, if the
    report trains, and of the evaluation. Rank 0 writes the whole report (and its log)."""
    log = io.StringIO()
    if not args.weights:
        train_if_needed(args, report_checkpoint(args), log)
    for section in sections:
        if section.name == "evaluation":
            _, info, _, common = report_model(args, resolve_device(args.device))
            run_section(section, ReportContext([], [], evaluation_images(args, info),
                                               smoothing_flags(args)), common, out, log)
    return []


def read_json(path):
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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
        "dataset": info.name, "arch": args.arch if checkpoint is None else checkpoint["arch"],
        "checkpoint": None if checkpoint is None else str(report_checkpoint(args)),
        "weights": args.weights, "test_accuracy": accuracy, "test_images": test_count,
        "epochs": None if checkpoint is None else checkpoint["epoch"],
        "training_args": None if checkpoint is None else checkpoint.get("train_args"),
        "report_args": vars(args),
        "seed": args.seed, "gallery_test_indices": context.gallery,
        "seconds": times, "sections": results, "evaluation": evaluation,
    }


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[common_parser(), smoothing_parser()])
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to report on (default: "
                             "outputs/checkpoints/<dataset>_<arch>.pt, trained if missing)")
    add_weights_flags(parser)
    parser.add_argument("--out", default=None,
                        help="report folder (default: outputs/report_<dataset>_<arch>)")
    parser.add_argument("--methods", nargs="+", choices=SECTION_NAMES, default=None,
                        help="sections to run (default: all)")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="test images the evaluation scores (default: 100; 32 for images "
                             "above 64 px)")
    parser.add_argument("--explorer-images", type=positive_int, default=None,
                        help="test images the explorer page precomputes every method's maps "
                             "for (default: 16; 4 for images above 64 px)")
    parser.add_argument("--no-explorer", action="store_true",
                        help="leave out the explorer page (explorer.html) and its data")
    parser.add_argument("--retrain", action="store_true",
                        help="train anew even if the checkpoint exists (with snapshots)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs when training (default: the dataset's recipe)")
    parser.add_argument("--max-train-images", type=positive_int, default=None,
                        help="train on the first N training images only (quick runs)")
    # None = not given: shapes / vgg, except that --weights without --dataset means ImageNet.
    parser.set_defaults(dataset=None, arch=None)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    args.command = " ".join(["python visualize_all.py", *map(shlex.quote, argv)])
    return run(build_report, args, several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
