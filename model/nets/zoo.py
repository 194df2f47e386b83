"""torchvision's classification CNNs by their torchvision names, built by torchvision's own
builder (``torchvision.models.get_model``: no copied definitions), so a state dict saved from
torchvision loads as it is and layers keep torchvision's names (``layer4``, ``features.10``).

Every CNN of ``torchvision.models.list_models(module=torchvision.models)`` is an architecture
here: 68 nets in 16 families. The vision transformers (ViT, Swin, MaxViT) are not: their
layers are tokens, not (C, H, W) feature maps, so none of the methods here applies to them
(one line says so). The input size and normalization are torchvision's weights metadata
(Inception v3 takes 299 px).

Images smaller than 64 px (the 28 and 32 px datasets) get a small-image stem instead of
ImageNet's, whose 4x to 32x downsampling would leave too little of a 32 px image: the first
conv at stride 1 (a kernel larger than 3 cut to 3x3, as He et al. 2016, sec. 4.2, do for
CIFAR-10; in a multi-branch stem, every conv of the image at stride 1) and, where that conv
was strided, the first pool removed (the stem's max pool);
then the last pools, while the traced pass would shrink a map to nothing (VGG's fifth at
28 px). The rule reads the net, not its
name (:func:`small_image_stem`). Every activation is made out-of-place: hooks that record a
layer's output or change a ReLU's gradient need the tensor the activation was given.
"""
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
import torch.nn as nn

from model.errors import UserError, one_line

SMALL_IMAGE = 64  # below this side, the small-image stem

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGENET_SIZE = 224

TRANSFORMER_PREFIXES = ("vit_", "swin_", "swin3d", "maxvit_")

# The auxiliary classifiers of GoogLeNet and Inception v3 run only in training; cnn-viz builds
# the nets without them (their outputs are not what a method explains), and drops their keys
# from a torchvision state dict.
# The small-image stems of AlexNet and VGG16, two of the four torchvision nets cnn-viz took
# before it took them all: their checkpoints were trained on these nets, which keep AlexNet's
# pools and drop VGG16's fifth, so they keep them (the pools removed; ResNet-18's and
# MobileNetV2's earlier stems are what the general rule gives).
EARLIER_STEM_POOLS = {"alexnet": (), "vgg16": ("features.30",)}

AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


@cache
def torchvision_archs():
    """Names of torchvision's classification CNNs (its vision transformers left out)."""
    import torchvision.models as models

    return tuple(name for name in models.list_models(module=models)
                 if not name.startswith(TRANSFORMER_PREFIXES))


def is_transformer(arch):
    """Whether ``arch`` names one of torchvision's vision transformers."""
    return arch.startswith(TRANSFORMER_PREFIXES)


def is_torchvision(arch):
    """Whether ``arch`` is one of torchvision's classification CNNs."""
    return arch in torchvision_archs()


def transformer_refusal(arch):
    return (f"--arch {arch} is a vision transformer: its layers are sequences of patch tokens, "
            "not (C, H, W) feature maps, so the CAM family, occlusion's incremental plan, the "
            "DeconvNet and the top-k scan have nothing to read; choose a CNN")


def torchvision_input(arch):
    """(image_size, mean, std) of torchvision's ``arch``, from its weights metadata."""
    import torchvision.models as models

    transforms = models.get_model_weights(arch).DEFAULT.transforms()
    return (int(transforms.crop_size[0]), tuple(float(v) for v in transforms.mean),
            tuple(float(v) for v in transforms.std))


@contextmanager
def parameters_on_meta():
    """While the block runs, every parameter and buffer a module registers lives on the meta
    device: any net builds without memory (as accelerate's ``init_empty_weights``), also those
    whose builders compute with tensors (RegNet's widths), which ``torch.device("meta")``
    would break."""
    register_parameter, register_buffer = nn.Module.register_parameter, \
        nn.Module.register_buffer

    def parameter(self, name, param):
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"),
                                                  requires_grad=param.requires_grad)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, \
            register_buffer


def build_torchvision(arch, in_channels, num_classes, image_size, small_stem=None,
                      imagenet_input=False):
    """Build torchvision's ``arch`` (random weights) for these inputs and classes.

    Args:
        small_stem: use the small-image stem (module docstring); None: when ``image_size``
            is below 64 px.
        imagenet_input: the net will take torchvision's ImageNet weights: GoogLeNet and
            Inception v3 then convert ImageNet's normalization to theirs (``transform_input``),
            as torchvision's builders do when they load weights.
    """
    import torchvision.models as models

    if is_transformer(arch):
        raise UserError(transformer_refusal(arch))
    if arch not in torchvision_archs():
        raise UserError(f"unknown torchvision architecture '{arch}'; "
                        f"`python train_cnn.py --arch list` lists them")
    extra = {}
    if arch in AUXILIARY:
        extra = {"aux_logits": False, "init_weights": True, "transform_input": imagenet_input}
    model = models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    if small_stem is None:
        small_stem = image_size < SMALL_IMAGE
    return prepare_imported(model, in_channels, image_size, small_stem,
                            EARLIER_STEM_POOLS.get(arch))


def prepare_imported(model, in_channels, image_size, small_stem, stem_pools=None):
    """A library's ImageNet net made ready here: the first conv takes ``in_channels``, the
    small-image stem where asked (``stem_pools``: the pools it removes, instead of
    :func:`small_image_stem`'s rule), every activation out-of-place, the input declared."""
    from model.nets.anatomy import declare_input

    name, conv = first_conv_module(model)
    strided_stem = conv.stride[0] > 1
    if small_stem:  # a multi-branch stem's other convs of the image take its stride too
        for other in image_readers(model, conv.in_channels):
            if other != name:
                model.get_submodule(other).stride = (1, 1)
    if small_stem or conv.in_channels != in_channels:
        kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
        if small_stem:
            stride = 1
            if kernel[0] > 3:
                kernel, padding = 3, 1
        replace_module(model, name, nn.Conv2d(in_channels, conv.out_channels, kernel, stride,
                                              padding, bias=conv.bias is not None))
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    declare_input(model, in_channels, image_size)
    if small_stem and stem_pools is not None:
        for pool in stem_pools:
            replace_module(model, pool, nn.Identity())
    elif small_stem:
        small_image_stem(model, strided_stem, image_size)
    return model


def image_readers(model, channels):
    """Names of the ``nn.Conv2d`` layers that read the input image itself: the stem's conv,
    and beside it the other branches of a multi-branch stem (RepVGG's 3x3 and 1x1 convs,
    summed: at stride 1 in one and 2 in the other their maps would not add up). Found by one
    pass of a blank 64-px image; a net that needs more (Inception v3: 75 px) fails deeper in,
    after its stem has read the image."""
    image = _blank_image(channels)
    readers = []

    def record(name):
        def hook(module, args):
            if args and args[0] is image:
                readers.append(name)
        return hook

    handles = [module.register_forward_pre_hook(record(name))
               for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    try:
        _runs_on(model, image)
    finally:
        for handle in handles:
            handle.remove()
    return readers


def _blank_image(channels):
    return torch.zeros(1, channels, SMALL_IMAGE, SMALL_IMAGE)


def _runs_on(model, image):
    """Whether ``model`` runs on ``image`` to the end: one pass without gradients in eval mode
    (no BatchNorm statistic changes; its mode restored). False where a map would shrink to
    nothing, or two maps to be added no longer match."""
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(image)
    except RuntimeError:
        return False
    finally:
        model.train(training)
    return True


def first_conv_module(model):
    """(name, module) of the first ``nn.Conv2d`` (in registration order: the stem)."""
    return next((name, module) for name, module in model.named_modules()
                if isinstance(module, nn.Conv2d))


def small_image_stem(model, strided_stem, image_size):
    """Where the stem downsampled by a strided conv (``strided_stem``), remove the first pool
    that runs (ResNet's, DenseNet's, AlexNet's: the strided conv and then a max pool, with a
    deep stem's convs between them in ResNet-D); then, from the last, each pool that would
    shrink a map to nothing at ``image_size``. A pool the net cannot run without is never
    removed: a residual shortcut's average pool (ResNet-D's downsampling, timm's byobnet),
    whose map would no longer add up with its block's. The traced passes run the net itself on
    one blank image at 64 px and at ``image_size``: a fraction of a second for the largest
    net."""
    from model.nets.anatomy import trace

    channels = first_conv_module(model)[1].in_channels
    body = trace(model, (channels, SMALL_IMAGE, SMALL_IMAGE))
    pools = [name for name, layer in body.layers.items() if layer.kind == "pool"]
    if strided_stem:
        removed = next((name for name in pools if _remove_pool(model, name, channels)), None)
        pools = [name for name in pools if name != removed]
    while pools:
        try:
            trace(model, (channels, image_size, image_size))
            return
        except RuntimeError:  # a pool's output would be empty: drop the last pool left
            _remove_pool(model, pools.pop(), channels)


def _remove_pool(model, name, channels):
    """Put an ``nn.Identity`` in place of the pool ``name`` if the net still runs at 64 px
    without it (else leave it); whether it was removed."""
    pool = model.get_submodule(name)
    replace_module(model, name, nn.Identity())
    if _runs_on(model, _blank_image(channels)):
        return True
    replace_module(model, name, pool)
    return False


def replace_module(model, name, module):
    """Put ``module`` where ``model.get_submodule(name)`` is."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def auxiliary_keys(arch, state):
    """``state`` without the keys of the auxiliary classifiers cnn-viz does not build."""
    prefixes = AUXILIARY.get(arch, ())
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}


def pretrained_state_dict(arch):
    """torchvision's pretrained ImageNet weights for ``arch`` (``--weights DEFAULT``), by
    torchvision's own download code and cache (``$TORCH_HOME``).

    Raises:
        UserError: the download failed (offline): the message suggests ``--weights FILE``.
    """
    import torchvision.models as models

    weights = models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, OSError, hash mismatch: no usable weights
        raise UserError(f"--weights DEFAULT: torchvision's {arch} weights could not be "
                        f"downloaded from {weights.url} ({one_line(error)}); download "
                        "the file elsewhere and pass it as --weights FILE") from None


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
