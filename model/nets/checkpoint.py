"""Checkpoints: one self-describing file per trained model, written atomically, loaded safely.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so that it loads with
``torch.load(..., weights_only=True)``, which runs no pickled code:

    format, format_version   "cnn-viz-checkpoint", 1
    model_args               keyword arguments of ``build_model`` (arch, channels, classes, ...)
    model_state              the weights (``state_dict``)
    dataset                  ``DatasetInfo.to_dict()``: name, classes, channels, size, mean, std
    arch, epoch, epochs      what was trained and how far
    test_accuracy, history   final accuracy and one dict of metrics per epoch
    train_args               ``vars(args)`` of train_cnn.py
    optimizer_state          for ``--resume``
    versions, created        library versions and time, to reproduce the run
"""
import datetime
import platform
import re
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from model.data.datasets import DATASET_INFO, DatasetInfo
from model.data.folders import folder_classes
from model.errors import UserError
from model.nets.architectures import build_model
from model.nets.zoo import (
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    IMAGENET_STD,
    TORCHVISION_ARCHS,
    imagenet_classes,
    read_class_names,
    read_state_dict,
    stem_of_state_dict,
)
from model.runtime.device import fast_model
from model.runtime.files import atomic_open, check_name_length, check_writable_file, os_reason

FORMAT = "cnn-viz-checkpoint"

FORMAT_VERSION = 1

CHECKPOINT_DIR = Path("outputs") / "checkpoints"

REQUIRED_KEYS = ("model_args", "model_state", "dataset", "arch", "epoch", "test_accuracy")


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, foreign or for another dataset/arch."""


def default_checkpoint_path(dataset, arch):
    """``outputs/checkpoints/<dataset>_<arch>.pt``: where train_cnn.py saves by default."""
    return CHECKPOINT_DIR / f"{dataset}_{arch}.pt"


def train_command(dataset, arch, path):
    """The train_cnn.py command line that writes the checkpoint ``path``."""
    command = f"python train_cnn.py --dataset {dataset or 'DATASET'} --arch {arch or 'ARCH'}"
    if not (dataset and arch and Path(path) == default_checkpoint_path(dataset, arch)):
        command += f" --out {path}"
    return command


def library_versions():
    """Versions of Python and the libraries a checkpoint depends on."""
    import numpy
    import torchvision

    # str(): torch.__version__ is a TorchVersion object, which the safe loader refuses.
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(numpy.__version__)}


def save_checkpoint(path, *, model, model_args, info, epoch, epochs, history, train_args,
                    optimizer=None):
    """Write a checkpoint atomically (see the module docstring for its fields)."""
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_args": dict(model_args),
        "model_state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "dataset": info.to_dict(),
        "arch": model_args["arch"],
        "epoch": epoch,
        "epochs": epochs,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "history": [dict(row) for row in history],
        "train_args": {key: _plain(value) for key, value in train_args.items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_open(path) as file:
        torch.save(checkpoint, file)


def _plain(value):
    """Arguments as plain values (paths become strings) so weights_only loading accepts them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def load_checkpoint(path, dataset=None, arch=None):
    """Read and validate a checkpoint.

    Args:
        path: the file.
        dataset, arch: when given, the checkpoint must be for this dataset / architecture.

    Returns:
        the checkpoint dict (tensors on the CPU).

    Raises:
        CheckpointError: missing (the message gives the train_cnn.py command that makes it),
            unreadable, not a cnn-viz checkpoint, or for another dataset or architecture.
    """
    path = Path(path)
    check_name_length(path, f"checkpoint {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one with: "
                              f"{train_command(dataset, arch, path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(path, error)}") from None
    except Exception as error:  # zip, pickle, EOF and unsafe-global errors all mean "unusable"
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated or "
                              f"not written by torch.save): {_load_failure(error)}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cnn-viz checkpoint (no '{FORMAT}' marker)")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version "
                              f"{checkpoint.get('format_version')}; this cnn-viz reads "
                              f"version {FORMAT_VERSION}")
    _check_contents(path, checkpoint)
    found_dataset = checkpoint["dataset"]["name"]
    if dataset is not None and found_dataset != dataset:
        raise CheckpointError(f"{path} is a checkpoint for dataset '{found_dataset}', "
                              f"not '{dataset}'")
    if arch is not None and checkpoint["arch"] != arch:
        raise CheckpointError(f"{path} is a checkpoint for arch '{checkpoint['arch']}', "
                              f"not '{arch}'")
    return checkpoint


def _check_contents(path, checkpoint):
    """Refuse a checkpoint whose fields are missing, of the wrong type or not finite."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    kinds = {"model_args": dict, "model_state": dict, "dataset": dict, "arch": str}
    wrong = [key for key, kind in kinds.items() if not isinstance(checkpoint[key], kind)]
    if wrong or not isinstance(checkpoint["dataset"].get("name"), str):
        raise CheckpointError(f"{path} is damaged: malformed {', '.join(wrong) or 'dataset'}")
    broken = [name for name, value in checkpoint["model_state"].items()
              if not isinstance(value, torch.Tensor)
              or (value.is_floating_point() and not torch.isfinite(value).all())]
    if broken:
        raise CheckpointError(f"{path} has NaN, infinite or missing weights ({broken[0]}); "
                              "it cannot be used: train again")


def model_from_checkpoint(checkpoint, device="cpu", source="the checkpoint"):
    """Rebuild the network of a loaded checkpoint, in eval mode on ``device``, its conv weights
    channels-last (``model.runtime.device.fast_model``).

    Returns:
        (model, DatasetInfo).

    Raises:
        CheckpointError: the checkpoint describes no buildable network, or its weights do not
            fit the architecture it describes (``source`` names it in the message).
    """
    try:
        model = build_model(**checkpoint["model_args"])
        info = DatasetInfo.from_dict(checkpoint["dataset"])
    except (UserError, TypeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{source} describes no network this cnn-viz can build: "
                              f"{_first_line(error)}") from None
    try:
        model.load_state_dict(checkpoint["model_state"])
    except (RuntimeError, TypeError) as error:
        raise CheckpointError(f"{source}: checkpoint weights do not fit its architecture: "
                              f"{' '.join(str(error).split())[:240]}") from None
    _check_dataset_fits(model, checkpoint["model_args"], info, source)
    return fast_model(model.to(device).eval()), info


def _check_dataset_fits(model, model_args, info, source):
    """Refuse a checkpoint whose dataset description disagrees with its network: images would
    be read with the wrong channels or size, or classes named wrongly.

    Raises:
        CheckpointError: the first disagreement, with both numbers.
    """
    first_conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    outputs = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    problems = [
        (info.channels != first_conv.in_channels,
         f"{info.channels} channel(s), but its first conv layer takes {first_conv.in_channels}"),
        (len(info.mean) != info.channels or len(info.std) != info.channels,
         f"{info.channels} channel(s), but {len(info.mean)} normalization mean(s) and "
         f"{len(info.std)} std(s)"),
        (len(info.classes) != outputs.out_features,
         f"{len(info.classes)} class names, but the network has {outputs.out_features} "
         "outputs"),
        (info.image_size != model_args["image_size"],
         f"{info.image_size} px images, but its model_args say {model_args['image_size']}"),
    ]
    for wrong, description in problems:
        if wrong:
            raise CheckpointError(f"{source} is inconsistent: its dataset has {description}; "
                                  "it cannot be used")


def load_model(path, device="cpu", dataset=None, arch=None):
    """Load, validate and rebuild in one step: returns (model, DatasetInfo, checkpoint)."""
    checkpoint = load_checkpoint(path, dataset, arch)
    model, info = model_from_checkpoint(checkpoint, device, source=str(path))
    return model, info, checkpoint


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def _load_failure(error):
    """Why ``torch.load`` refused a file, in a few words (no advice to load unsafely)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours parts of its message
    if "Unsupported global" in text:
        return "it holds pickled Python objects, which cnn-viz never loads"
    if "Weights only load failed" in text:
        return "its content is not a torch.save file"
    text = " ".join(text.split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_destination(path, dataset, arch):
    """Before training into ``path``: refuse to overwrite anything but a checkpoint of the same
    dataset and arch, and make sure the file can be written.

    Raises:
        CheckpointError: ``path`` holds something else (a corrupt, foreign or other checkpoint),
            which is left untouched.
        UserError: ``path`` is a folder or cannot be written.
    """
    check_writable_file(path)
    if Path(path).exists():
        try:
            load_model(path, "cpu", dataset, arch)
        except CheckpointError as error:
            raise CheckpointError(f"refusing to overwrite: {error}; delete it or choose "
                                  "another --out") from None


def snapshot_path(path, epoch):
    """Per-epoch snapshot of ``--save-every-epoch``: ``<stem>_epochs/epoch_003.pt`` beside it."""
    path = Path(path)
    return path.parent / f"{path.stem}_epochs" / f"epoch_{epoch:03d}.pt"


def curve_path(path):
    """The training-curve PNG written beside a checkpoint: ``<stem>_curve.png``."""
    path = Path(path)
    return path.parent / f"{path.stem}_curve.png"


def model_from_weights(arch, spec, dataset=None, class_names=None, device="cpu",
                       data_dir=None, image_size=None):
    """A torchvision net with the user's weights (``--weights``), without a training run.

    Args:
        arch: one of ``model.zoo.TORCHVISION_ARCHS``.
        spec: a torchvision-format state dict file, or ``DEFAULT`` (``model.zoo.read_state_dict``).
        dataset: the dataset the weights were trained on (its classes, size and
            normalization); None means ImageNet input: ``image_size`` px (default 224),
            ImageNet's normalization, and with 1000 outputs ImageNet's class names.
            ``imagefolder`` is ImageNet input too, classes named by ``data_dir``'s folders.
        class_names: a file of class names, one per line (for other class counts).

    Returns:
        (model in eval mode on ``device``, conv weights channels-last, DatasetInfo).

    Raises:
        UserError: see ``read_state_dict``; weights of another architecture or class count.
    """
    if arch not in TORCHVISION_ARCHS:
        raise UserError("--weights loads torchvision architectures "
                        f"({', '.join(TORCHVISION_ARCHS)}); '{arch}' is cnn-viz's own: load "
                        "its --checkpoint")
    if image_size and dataset not in (None, "imagefolder"):
        raise UserError(f"--image-size is fixed by --dataset {dataset}; it is for ImageNet "
                        "input and imagefolder")
    state = read_state_dict(arch, spec)
    in_channels, num_classes, small_stem = stem_of_state_dict(arch, state)
    if dataset in (None, "imagefolder"):
        info = DatasetInfo(dataset or "imagenet", (), 3, image_size or IMAGENET_SIZE,
                           IMAGENET_MEAN, IMAGENET_STD)
        classes = (imagenet_classes() if num_classes == 1000 and not class_names
                   else folder_classes(data_dir) if dataset else None)
    else:
        info = DATASET_INFO[dataset]
        classes = info.classes
    if class_names:
        classes = read_class_names(class_names, num_classes)
    if classes is None:
        raise UserError(f"--weights {spec} has {num_classes} outputs: name them with "
                        "--class-names FILE (one name per line)")
    if len(classes) != num_classes:
        raise UserError(f"--weights {spec} has {num_classes} outputs, but {info.name} has "
                        f"{len(classes)} classes; give --class-names FILE")
    info = replace(info, classes=tuple(classes), channels=in_channels)
    model = build_model(arch, in_channels, num_classes, info.image_size, small_stem=small_stem)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"--weights {spec} do not fit torchvision's {arch}: "
                        f"{' '.join(str(error).split())[:240]}") from None
    return fast_model(model.to(device).eval()), info
