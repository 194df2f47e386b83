"""One command, one report folder: every method on one model, and how far to trust each map.

    python visualize_all.py --dataset shapes                  # trains first if needed, ~90 s
    python visualize_all.py --dataset shapes --methods cam occlusion evaluation
    python visualize_all.py --dataset mnist --arch simple --data-dir data --num-images 200
    python visualize_all.py --dataset shapes --retrain        # train anew, with snapshots
    python visualize_all.py --arch mobilenet_v2 --weights mobilenet_v2.pth \
        --dataset imagefolder --data-dir imagenette             # a 5-minute plan on a CPU
    python visualize_all.py ... --budget 15                   # more photos, within 15 minutes
    python visualize_all.py ... --full                        # everything (about an hour)
    torchrun --nproc_per_node 2 visualize_all.py --dataset shapes  # training and evaluation
                                                                    # shared by 2 processes

Trains the model when its checkpoint is missing (or with ``--retrain``, keeping a snapshot per
epoch for the feature-evolution figures), then plans: it measures one photo of every kind of
work (a forward pass, a backward pass, every method's map, ROAD, a class-model step, a figure)
and prints each section with its counts and estimated time. Above 64 px on a CPU the counts
(explorer and evaluation photos, the randomization check's photos and stages, class-model
steps, Score-CAM's channels, scanned test images) are fitted into ``--budget`` minutes (default
5) by one rule (``model.pipeline.plan``), every section kept; up to 64 px and on CUDA the
default is the full run. It then picks a fixed, seeded gallery of test images (right and wrong
decisions, several classes), runs each method script on them, scores every attribution method
(evaluate_attributions.py), and writes ``outputs/report_<dataset>_<arch>/``: ``index.html``
(one offline page, the plan's estimates beside the measured times), the PNGs in a folder per
method, ``explorer.html``, ``summary.json`` and ``log.txt`` (everything the scripts printed).
The run itself is ``model.pipeline.report``; this file is its command line.
"""
import shlex
import sys

import class_activation_maps
import deconvnet
import evaluate_attributions
import feature_maps
import gradient_ascent
import max_activation_search
import occlusion_sensitivity
import train_cnn
from model.cli.arguments import (
    ArgumentParser,
    common_parser,
    minutes_or_none,
    positive_int,
    smoothing_parser,
)
from model.cli.method_inputs import add_weights_flags
from model.cli.running import run
from model.pipeline.report import build_report
from model.report.sections import SECTION_NAMES

SCRIPTS = {module.__name__: module for module in (
    class_activation_maps, deconvnet, evaluate_attributions, feature_maps, gradient_ascent,
    max_activation_search, occlusion_sensitivity, train_cnn)}


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
    parser.add_argument("--budget", type=minutes_or_none, default=None,
                        help="minutes the report may take: the plan fits its counts into "
                             "them, every section kept; none = the full run (default: 5 "
                             "above 64 px on a CPU, else none)")
    parser.add_argument("--full", action="store_true",
                        help="the full run, no budget (the same as --budget none); its plan "
                             "and estimate are printed before anything runs")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="test images the evaluation scores, kept by any plan (default: "
                             "100; 32 above 64 px, fewer in a budget's plan)")
    parser.add_argument("--explorer-images", type=positive_int, default=None,
                        help="test images the explorer page precomputes every method's maps "
                             "for, kept by any plan (default: 16; 4 above 64 px, fewer in a "
                             "budget's plan)")
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
    return run(lambda parsed: build_report(parsed, SCRIPTS), args, several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
