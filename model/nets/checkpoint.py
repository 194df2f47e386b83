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
from model.nets.architectures import architecture_kind, build_model
from model.nets.imported import is_user_module, timm_input
from model.nets.weights import fit_state_dict, load_weights, read_weights
from model.nets.zoo import (
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    IMAGENET_STD,
    auxiliary_keys,
    first_conv_module,
    imagenet_classes,
    parameters_on_meta,
    pretrained_state_dict,
    read_class_names,
    torchvision_input,
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
    return CHECKPOINT_DIR / f"{dataset}_{arch_slug(arch)}.pt"


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
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    outputs = linears[-1] if linears else None  # SqueezeNet's classifier is a conv
    problems = [
        (info.channels != first_conv.in_channels,
         f"{info.channels} channel(s), but its first conv layer takes {first_conv.in_channels}"),
        (len(info.mean) != info.channels or len(info.std) != info.channels,
         f"{info.channels} channel(s), but {len(info.mean)} normalization mean(s) and "
         f"{len(info.std)} std(s)"),
        (outputs is not None and len(info.classes) != outputs.out_features,
         f"{len(info.classes)} class names, but the network has "
         f"{outputs.out_features if outputs is not None else '?'} "
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
    """A torchvision, timm or user's net with the user's weights (``--weights``), without a
    training run.

    Args:
        arch: a torchvision CNN's name, ``timm:NAME`` or ``file.py:Name`` (``build_model``).
        spec: a weights file in any form ``model.nets.weights.read_weights`` reads (a state
            dict, a training checkpoint holding one, ``.safetensors``; DDP's and Lightning's
            prefixes are stripped), or ``DEFAULT`` for torchvision's pretrained weights.
        dataset: the dataset the weights were trained on (its classes, size and
            normalization); None means the net's own input: its size, mean and std from
            torchvision's weights metadata or timm's pretrained config (ImageNet's for a user's
            net), and with 1000 outputs ImageNet's class names. ``imagefolder`` is that input
            too, classes named by ``data_dir``'s folders.
        class_names: a file of class names, one per line (for other class counts).

    Returns:
        (model in eval mode on ``device``, conv weights channels-last, DatasetInfo).

    Raises:
        UserError: see ``read_weights``; keys or shapes that do not fit (one line naming the
            first missing and unexpected keys), a class count without names.
    """
    kind = architecture_kind(arch)
    if kind == "project":
        raise UserError(f"--weights loads torchvision's, timm's or your own nets; '{arch}' is "
                        "cnn-viz's own: load its --checkpoint")
    if image_size and dataset not in (None, "imagefolder"):
        raise UserError(f"--image-size is fixed by --dataset {dataset}; it is for ImageNet "
                        "input and imagefolder")
    if spec == "DEFAULT":
        if kind != "torchvision":
            raise UserError("--weights DEFAULT is torchvision's pretrained weights; for "
                            f"{arch} give --weights FILE")
        state = pretrained_state_dict(arch)
    else:
        state = read_weights(spec)
    size, mean, std = native_input(arch)
    in_channels, num_classes, small_stem = shape_of_weights(arch, state, size)
    if dataset in (None, "imagefolder"):
        if in_channels != len(mean):  # a one-channel net: the mean of the three
            mean = (sum(mean) / len(mean),) * in_channels
            std = (sum(std) / len(std),) * in_channels
        info = DatasetInfo(dataset or "imagenet", (), in_channels, image_size or size, mean, std)
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
    model = build_model(arch, in_channels, num_classes, info.image_size, small_stem=small_stem,
                        imagenet_input=dataset in (None, "imagefolder"))
    load_weights(model, auxiliary_keys(arch, fit_state_dict(state, model.state_dict())),
                 f"--weights {spec}")
    return fast_model(model.to(device).eval()), info


def native_input(arch):
    """(image_size, mean, std) a net takes as its library built it: torchvision's weights
    metadata, timm's pretrained config, ImageNet's 224 px for a user's net."""
    kind = architecture_kind(arch)
    if kind == "torchvision":
        return torchvision_input(arch)
    if kind == "timm":
        return timm_input(arch)
    return IMAGENET_SIZE, IMAGENET_MEAN, IMAGENET_STD


def shape_of_weights(arch, state, image_size):
    """What a state dict says about its net: (in_channels, num_classes, small_stem), read from
    the first conv's and the classifier's weights as a template of the net names them (built
    on the meta device). small_stem: True where the first conv's kernel is 3x3 and the net's
    own is larger (ResNet's, AlexNet's small-image stem); else None (decided by image size)."""
    with parameters_on_meta():
        template = build_model(arch, 3, 1000, image_size, small_stem=False)
    fitted = fit_state_dict(state, template.state_dict())
    conv_name, conv = first_conv_module(template)
    classifier = [name for name, module in template.named_modules()
                  if isinstance(module, (nn.Linear, nn.Conv2d))][-1]
    for key in (f"{conv_name}.weight", f"{classifier}.weight"):
        if key not in fitted or fitted[key].dim() not in (2, 4):
            raise UserError(f"these weights do not fit {arch}: no '{key}' (the file's first "
                            f"keys: {', '.join(list(fitted)[:3])})")
    first = fitted[f"{conv_name}.weight"]
    small_stem = True if first.shape[-1] == 3 and conv.kernel_size[0] > 3 else None
    return first.shape[1], fitted[f"{classifier}.weight"].shape[0], small_stem


def arch_slug(arch):
    """``arch`` as a file-name part: ``timm-resnet18``, ``net-Name`` for ``path/net.py:Name``."""
    if is_user_module(arch):
        where, _, name = arch.rpartition(":")
        arch = f"{Path(where).stem if where.endswith('.py') else where}-{name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", arch)
