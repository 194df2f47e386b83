"""Train a CNN of the ``model`` package and save a self-describing checkpoint.

    python train_cnn.py --dataset shapes                     # vgg, offline, < 1 min on a CPU
    python train_cnn.py --dataset mnist --arch simple --epochs 5
    python train_cnn.py --dataset cifar10 --save-every-epoch  # snapshots for feature evolution
    python train_cnn.py --dataset cifar10 --resume            # continue after Ctrl-C
    python train_cnn.py --dataset cifar10 --recipe long       # 92%, about an hour on a CPU
    python train_cnn.py --dataset imagefolder --data-dir photos --arch resnet18  # your images
    torchrun --nproc_per_node 2 train_cnn.py --dataset shapes  # 2 processes (or GPUs), DDP
    python train_cnn.py --evaluate-only --dataset imagefolder --data-dir photos \
        --arch mobilenet_v2 --weights weights.pth   # top-1/top-5 of a trained net, no training

Every epoch ends with the checkpoint rewritten atomically
(``outputs/checkpoints/<dataset>_<arch>.pt`` by default) and a training-curve PNG beside it,
so an interrupted run keeps its last good epoch and ``--resume`` continues from there.
Under torchrun every process trains on its part of each batch (DistributedDataParallel,
``model.training.loop.for_training``) with the one-process batch size and schedule; rank 0 alone
writes the checkpoint, the curve and the log.
Defaults (epochs, batch size, learning rate, augmentation) come from the per-dataset recipe
in ``model.training.recipes.RECIPES``, or from a named one (``--recipe``,
``model.training.recipes.NAMED_RECIPES``).
"""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from model.cli.arguments import (
    ArgumentParser,
    common_parser,
    non_negative_float,
    positive_float,
    positive_int,
)
from model.cli.method_inputs import (
    add_weights_flags,
    check_weights_flags,
    load_split,
    weights_model,
)
from model.cli.running import run
from model.data.datasets import load_dataset
from model.errors import UserError
from model.figures.curves import plot_training_curve
from model.figures.plotting import save_figure
from model.nets.architectures import architecture_kind, build_model
from model.nets.checkpoint import (
    check_destination,
    curve_path,
    default_checkpoint_path,
    load_model,
    save_checkpoint,
    snapshot_path,
)
from model.nets.zoo import SMALL_IMAGE
from model.runtime import distributed
from model.runtime.device import resolve_device, seed_everything
from model.runtime.files import check_name_length, check_writable_file
from model.training.loop import TrainingDivergedError, fit, prepare_model
from model.training.optim import make_optimizer
from model.training.recipes import DEFAULT_RECIPE, recipe_for
from model.training.views import top_k_accuracies


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0], parents=[common_parser()])
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help="a named training recipe instead of the dataset's default one "
                             "(cifar10 with vgg: 'long' or 'deep', 92%% in about an hour on a "
                             "CPU)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="number of epochs (default: the dataset's recipe)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="training batch size (default: the dataset's recipe)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="peak learning rate of the one-cycle schedule "
                             "(default: the dataset's recipe)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=None,
                        help="L2 weight decay on conv and linear weights "
                             "(default: the dataset's recipe)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop + horizontal flip (default: on for cifar10 only)")
    parser.add_argument("--out", default=None,
                        help="checkpoint path (default: outputs/checkpoints/<dataset>_<arch>.pt)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint at --out, with its stored settings "
                             "(recipe, epochs, batch size, lr, weight decay, augmentation, seed, "
                             "max train images) for every option not given")
    parser.add_argument("--save-every-epoch", action="store_true",
                        help="also keep a snapshot per epoch in <out stem>_epochs/ "
                             "(for feature evolution during training)")
    parser.add_argument("--max-train-images", type=positive_int, default=None,
                        help="train on the first N training images only (quick runs)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    evaluation = parser.add_argument_group(
        "evaluating a trained net instead of training one")
    evaluation.add_argument("--evaluate-only", action="store_true",
                            help="print the top-1 and top-5 test accuracy of a trained net (and "
                                 "among the folder's classes when it has fewer than the net), "
                                 "then stop: the checkpoint at --checkpoint, or --weights")
    evaluation.add_argument("--checkpoint", default=None,
                            help="with --evaluate-only: the checkpoint to evaluate (default: "
                                 "--out's path)")
    add_weights_flags(evaluation)
    parser.set_defaults(seed=None)  # 0, or the resumed checkpoint's seed (apply_recipe)
    return parser


RECIPE_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "augment")


def apply_recipe(args, stored=None):
    """Fill every training option left unset: from ``stored`` (the ``train_args`` of the
    checkpoint being resumed, so that a resumed run continues the same schedule), else from
    the dataset's recipe, default or ``--recipe`` (seed 0, every training image).

    Returns:
        the :class:`~model.training.recipes.Recipe`.
    """
    if args.recipe is None:
        args.recipe = (stored or {}).get("recipe", DEFAULT_RECIPE)
    recipe = recipe_for(args.dataset, args.arch, args.recipe)
    defaults = {**{field: getattr(recipe, field) for field in RECIPE_FIELDS},
                "seed": 0, "max_train_images": None, "image_size": None}
    for field, default in defaults.items():
        if getattr(args, field) is None:
            setattr(args, field, (stored or {}).get(field, default))
    args.vgg_plan = recipe.vgg_plan
    return recipe


def accuracy_note(metrics, recipe, test_count):
    """The test accuracy of an epoch's metrics (saying on how many of the ``test_count`` test
    images, if not all), with the test-time views' one if measured."""
    note = f"{100 * metrics['test_accuracy']:.2f}%"
    if metrics.get("test_images", test_count) < test_count:
        note += f" of {metrics['test_images']} images"
    if "tta_accuracy" in metrics:
        note += f"; {100 * metrics['tta_accuracy']:.2f}% with {recipe.test_views} views"
    return note


def restore(checkpoint, args, model_args, model, optimizer):
    """Load ``checkpoint`` (read from ``args.out``) into model and optimizer.

    Returns:
        (history, epochs done).
    """
    if checkpoint["model_args"] != model_args or checkpoint.get("optimizer_state") is None:
        raise UserError(f"{args.out} was not written by this training set-up, so it cannot be "
                        "resumed; train anew without --resume or choose another --out")
    model.load_state_dict(checkpoint["model_state"])
    try:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    except ValueError:  # other parameter groups: another optimizer made it
        raise UserError(f"{args.out} holds the state of another optimizer than recipe "
                        f"'{args.recipe}' uses, so it cannot be resumed with it; give the recipe "
                        "it was trained with (CIFAR-10 checkpoints from before Muon became the "
                        "default: --recipe sgd)") from None
    return checkpoint["history"], checkpoint["epoch"]


def evaluate(args):
    """``--evaluate-only``: print the accuracies of a trained net on its test split."""
    device = resolve_device(args.device)
    if args.weights:
        model, info = weights_model(args, device)
        source, arch = args.weights, args.arch
    else:
        # A --checkpoint says what it is: --dataset and --arch (default shapes, vgg) name only
        # the default path.
        source = (args.checkpoint or args.out or
                  default_checkpoint_path(args.dataset, args.arch))
        model, info, checkpoint = load_model(source, device)
        arch = checkpoint["arch"]
    test_set = load_split(info, "test", args)
    with tqdm(total=len(test_set), unit="image", desc="test", leave=False,
              disable=args.no_progress) as bar:
        scores = top_k_accuracies(model, test_set, device,
                                  progress=lambda done, _: bar.update(done - bar.n))
    accuracies = [f"top-{k} {100 * value:.2f}%" for k, value in scores["top_k"].items()]
    if scores["among_accuracy"] is not None:
        accuracies.append(f"among the {scores['among_classes']} classes of the test images "
                          f"{100 * scores['among_accuracy']:.2f}%")
    print(f"{arch} ({source}) on {scores['images']} {info.name} test images: "
          f"{', '.join(accuracies)}")
    return []


def check_evaluation_flags(args):
    """Refuse the flags of ``--evaluate-only`` without it, before any work."""
    for flag in ("checkpoint", "weights", "class_names"):
        if getattr(args, flag) and not args.evaluate_only:
            raise UserError(f"--{flag.replace('_', '-')} is for --evaluate-only; training "
                            "writes the checkpoint at --out")
    if args.evaluate_only:
        check_weights_flags(args)


def train_or_evaluate(args):
    check_evaluation_flags(args)
    return evaluate(args) if args.evaluate_only else train(args)


def train(args):
    if args.out is None:
        args.out = str(default_checkpoint_path(args.dataset, args.arch))
    device = resolve_device(args.device)
    processes = distributed.current()
    say = print if processes.main else lambda *_: None  # rank 0 speaks for every process
    # Check the destination before any work: --resume needs a usable checkpoint there, and a
    # new run may only replace a checkpoint of the same dataset and arch.
    if args.resume:
        check_writable_file(args.out)
        resumed = load_model(args.out, "cpu", args.dataset, args.arch)[2]  # validated whole
        recipe = apply_recipe(args, resumed.get("train_args"))
    else:
        check_destination(args.out, args.dataset, args.arch)
        recipe = apply_recipe(args)
    # The files written beside the checkpoint need their names to fit too.
    check_name_length(curve_path(args.out), "--out (its training curve)")
    if args.save_every_epoch:
        check_name_length(snapshot_path(args.out, args.epochs), "--out (its snapshots)")
    seed_everything(args.seed)
    if args.image_size and args.dataset != "imagefolder":
        raise UserError(f"--image-size is fixed by --dataset {args.dataset}; it is for "
                        "imagefolder")
    if args.batch_size < processes.size:
        raise UserError(f"--batch-size {args.batch_size} is smaller than the {processes.size} "
                        "processes that share each batch")
    train_set = load_dataset(args.dataset, "train", args.data_dir, image_size=args.image_size,
                             workers=args.workers, first=args.max_train_images)
    info = train_set.info
    test_set = load_dataset(args.dataset, "test", args.data_dir, info=info,
                            workers=args.workers)
    model_args = {"arch": args.arch, "in_channels": info.channels,
                  "num_classes": len(info.classes), "image_size": info.image_size,
                  "vgg_plan": args.vgg_plan}
    if architecture_kind(args.arch) in ("torchvision", "timm"):  # the stem, once decided
        model_args["small_stem"] = info.image_size < SMALL_IMAGE
    model = build_model(**model_args).to(device)
    prepare_model(model, recipe, train_set, device)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, recipe)
    history, done = (restore(resumed, args, model_args, model, optimizer) if args.resume
                     else ([], 0))
    if done >= args.epochs:
        say(f"{args.out} already has {done} of {args.epochs} epochs; nothing to do")
        return []
    on = f"{processes.size} processes ({device.type})" if processes.several else device
    say(f"training {args.arch} on {args.dataset} ({len(train_set)} train / {len(test_set)} "
        f"test images) on {on} for epochs {done + 1}-{args.epochs}")
    epochs = fit(model, optimizer, train_set, test_set, first_epoch=done + 1,
                 epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                 peak_lr=args.lr, device=device, augment=args.augment,
                 progress=not args.no_progress, recipe=recipe)
    written = [Path(args.out), curve_path(args.out)] if processes.main else []
    try:
        for metrics in epochs:
            history.append(metrics)
            if not processes.main:
                continue
            tqdm.write(f"epoch {metrics['epoch']}/{args.epochs}  "
                       f"train loss {metrics['train_loss']:.4f}  "
                       f"test loss {metrics['test_loss']:.4f}  "
                       f"test acc {accuracy_note(metrics, recipe, len(test_set))}  "
                       f"{metrics['images_per_s']:.0f} img/s  {metrics['seconds']:.1f} s")
            save = dict(model=model, model_args=model_args, info=info, epoch=metrics["epoch"],
                        epochs=args.epochs, history=history, train_args=vars(args),
                        optimizer=optimizer)
            save_checkpoint(args.out, **save)
            if args.save_every_epoch:
                save_checkpoint(snapshot_path(args.out, metrics["epoch"]), **save)
                written.append(snapshot_path(args.out, metrics["epoch"]))
            save_figure(plot_training_curve(history, f"{args.arch} on {args.dataset}"),
                        curve_path(args.out))
    except TrainingDivergedError as error:
        kept = (f"{args.out} keeps epoch {history[-1]['epoch']}" if history
                else "no checkpoint was written")
        raise TrainingDivergedError(f"{error}; {kept}") from None
    say(f"saved {args.out} (test accuracy {accuracy_note(history[-1], recipe, len(test_set))}) "
        f"and {curve_path(args.out)}")
    return written


def interrupted_note(args):
    """The line printed after Ctrl-C: what is saved and how to continue."""
    if args.out and Path(args.out).is_file():
        return (f"interrupted: {args.out} keeps the last finished epoch; continue with "
                "--resume")
    return "interrupted before the first epoch finished; nothing was saved"


def main(argv=None, written=None, notes=None):
    args = get_args_parser().parse_args(argv)
    return run(train_or_evaluate, args, interrupted=lambda: interrupted_note(args),
               written=written, notes=notes, several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
