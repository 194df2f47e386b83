"""torchvision's classification networks as cnn-viz architectures, with the user's weights.

``resnet18``, ``alexnet``, ``vgg16`` and ``mobilenet_v2`` are built by ``torchvision.models``
(no copied definitions), so a state dict saved from torchvision loads as it is and layers keep
torchvision's names (``layer4``, ``features.10``).

Images smaller than 64 px (the 28 and 32 px datasets) get the usual small-image stem instead
of ImageNet's, whose 4x (AlexNet) to 32x (VGG16) downsampling would leave too little or
nothing of a 32 px image: ResNet-18's 3x3 stride-1 ``conv1`` without the max pool (He et al.
2016, sec. 4.2), AlexNet's ``features.0`` as a 3x3 stride-1 conv, MobileNetV2's first conv at
stride 1, and VGG16 without its fifth max pool. The checkpoint stores ``small_stem`` to
rebuild the same net. Every ReLU is made out-of-place: hooks that record a layer's output or
change a ReLU's gradient need the tensor the ReLU was given.
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn

from model.errors import UserError, one_line

TORCHVISION_ARCHS = ("resnet18", "alexnet", "vgg16", "mobilenet_v2")

SMALL_IMAGE = 64  # below this side, the small-image stem

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGENET_SIZE = 224


def residual_blocks():
    """torchvision's residual blocks (ResNet's ``BasicBlock`` and ``Bottleneck``), as a tuple
    for ``isinstance``.

    Empty while torchvision is not imported: no module can be one of its blocks then (building
    a torchvision net imports it), and a script on the project's nets does not pay the 2-3 s
    that importing torchvision costs (it imports ``torch._dynamo``).
    """
    if "torchvision" not in sys.modules:
        return ()
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return (BasicBlock, Bottleneck)


def inverted_residual_blocks():
    """MobileNetV2's ``InvertedResidual``, as :func:`residual_blocks` gives its blocks."""
    if "torchvision" not in sys.modules:
        return ()
    from torchvision.models.mobilenetv2 import InvertedResidual

    return (InvertedResidual,)


def conv_blocks():
    """The blocks ``model.nets.layers.conv_layer_names`` lists whole (a ResNet stage of
    residual blocks too): what each method studies, the last of them by default (ResNet-18:
    layer4, AlexNet: features.10, VGG16: features.28, MobileNetV2: features.18); as
    :func:`residual_blocks` gives its blocks."""
    if "torchvision" not in sys.modules:
        return ()
    from torchvision.ops.misc import Conv2dNormActivation

    return residual_blocks() + inverted_residual_blocks() + (Conv2dNormActivation,)


LAYER_NAMES = {  # what --help says; tests/test_zoo.py checks it against conv_layer_names
    "resnet18": "conv1, layer1 ... layer4 (their blocks: layer1.0, layer1.1, ...)",
    "alexnet": "features.0, .3, .6, .8, .10 (conv1 to conv5)",
    "vgg16": "features.0, .2, .5, .7, .10, .12, .14, .17, .19, .21, .24, .26, .28",
    "mobilenet_v2": "features.0 ... features.18",
}


def build_torchvision(arch, in_channels, num_classes, image_size, small_stem=None):
    """Build torchvision's ``arch`` (random weights) for these inputs and classes.

    Args:
        small_stem: use the small-image stem (module docstring); None: when ``image_size``
            is below 64 px.
    """
    import torchvision.models as models

    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"unknown torchvision architecture '{arch}'; choose from "
                        f"{', '.join(TORCHVISION_ARCHS)}")
    if small_stem is None:
        small_stem = image_size < SMALL_IMAGE
    model = getattr(models, arch)(weights=None, num_classes=num_classes)
    first_conv = {"resnet18": "conv1", "alexnet": "features.0", "vgg16": "features.0",
                  "mobilenet_v2": "features.0.0"}[arch]
    conv = model.get_submodule(first_conv)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    if small_stem:
        if arch == "resnet18":
            kernel, stride, padding = 3, 1, 1
            model.maxpool = nn.Identity()
        elif arch == "alexnet":
            kernel, stride, padding = 3, 1, 1
        elif arch == "mobilenet_v2":
            stride = 1
        else:  # vgg16: four 2x2 pools take 32 px to 2 px, a fifth would leave nothing of 28
            model.features[30] = nn.Identity()
    if small_stem or in_channels != conv.in_channels:
        _replace(model, first_conv, nn.Conv2d(in_channels, conv.out_channels, kernel, stride,
                                               padding, bias=conv.bias is not None))
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.Hardtanh)):  # nn.ReLU6 is an nn.Hardtanh
            module.inplace = False
    return model


def stem_args(arch, image_size):
    """The ``model_args`` entry that rebuilds a torchvision net's stem for this image size
    (none for the project's nets)."""
    return {"small_stem": image_size < SMALL_IMAGE} if arch in TORCHVISION_ARCHS else {}


def _replace(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def stem_of_state_dict(arch, state):
    """What a torchvision-format state dict says about its net: (in_channels, num_classes,
    small_stem), read from the first conv's and the last Linear layer's weights. ResNet-18's
    and AlexNet's stems differ in kernel size; VGG16's and MobileNetV2's only in a pool or a
    stride, which weights do not show (small_stem None: decided by the image size)."""
    first = {"resnet18": "conv1.weight", "alexnet": "features.0.weight",
             "vgg16": "features.0.weight", "mobilenet_v2": "features.0.0.weight"}[arch]
    last = {"resnet18": "fc.weight", "alexnet": "classifier.6.weight",
            "vgg16": "classifier.6.weight", "mobilenet_v2": "classifier.1.weight"}[arch]
    for key in (first, last):
        if key not in state or state[key].dim() not in (2, 4):
            raise UserError(f"these weights are not a torchvision {arch}: no '{key}'")
    conv = state[first]
    small_stem = conv.shape[-1] == 3 if arch in ("resnet18", "alexnet") else None
    return conv.shape[1], state[last].shape[0], small_stem


def imagenet_classes():
    """The 1000 ImageNet class names in torchvision's order (shipped with torchvision)."""
    import torchvision.models as models

    return tuple(models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def read_class_names(path, count):
    """``count`` class names from a text file, one per line (blank lines ignored).

    Raises:
        UserError: the file is missing or unreadable, or holds another number of names.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else \
            "not a UTF-8 text file"
        raise UserError(f"--class-names {path}: cannot read it ({reason})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise UserError(f"--class-names {path} has {len(names)} names; the network has "
                        f"{count} outputs")
    return tuple(names)


def read_state_dict(arch, spec):
    """The weights ``--weights`` names: a torchvision-format state dict file, or ``DEFAULT``
    for torchvision's pretrained ImageNet weights (downloaded by torchvision's own code into
    its cache, ``$TORCH_HOME``).

    Raises:
        UserError: a missing or unreadable file, one that is no state dict (a cnn-viz
            checkpoint is pointed to --checkpoint), or a failed download.
    """
    import torchvision.models as models

    if spec == "DEFAULT":
        weights = models.get_model_weights(arch).DEFAULT
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # URLError, OSError, hash mismatch: no usable weights
            raise UserError(f"--weights DEFAULT: torchvision's {arch} weights could not be "
                            f"downloaded from {weights.url} ({one_line(error)}); download "
                            "the file elsewhere and pass it as --weights FILE") from None
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--weights {spec}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and unsafe-global errors: unusable
        raise UserError(f"--weights {spec}: not a readable state dict saved by torch.save "
                        f"({one_line(error)})") from None
    if isinstance(state, dict) and state.get("format") == "cnn-viz-checkpoint":
        raise UserError(f"--weights {spec} is a cnn-viz checkpoint; load it with --checkpoint")
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor)
                                               for value in state.values()):
        raise UserError(f"--weights {spec}: not a state dict (a dict of tensors, as "
                        "model.state_dict() gives)")
    return state
