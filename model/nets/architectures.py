"""CNN architectures with stable, readable layer names.

- ``simple``: the teaching net, 16 filters in all, small enough to study every filter by hand:
  Conv(in->8, 3x3, pad 1)+ReLU+MaxPool(2), Conv(8->8, 3x3, pad 1)+ReLU+MaxPool(2), Flatten,
  Linear(8*H/4*W/4 -> classes).
- ``vgg``: a small VGG-style net (Simonyan & Zisserman 2015) of Conv-BatchNorm-ReLU blocks and
  max pools, ending in global average pooling and one Linear layer. That ending is the form
  the original CAM needs (Zhou et al. 2016, Eq. 2: M_c = sum_k w_k^c f_k), and its max pools
  give the switches the DeconvNet unpools with (Zeiler & Fergus 2014, sec. 2.1).

Both are ``nn.Sequential`` whose children are named ``conv1, bn1, relu1, pool1, ..., gap, fc``,
so ``--layer conv3`` names a module and ``model.conv3`` reaches it.
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from model.errors import UserError
from model.nets.anatomy import declare_input
from model.nets.imported import build_timm, build_user_module, is_timm, is_user_module
from model.nets.zoo import build_torchvision, is_torchvision, is_transformer, transformer_refusal

# VGG layer plans in torchvision's notation: an int is a 3x3 Conv-BN-ReLU block with that many
# output channels, "M" a 2x2 max pool, "W" a frozen 2x2 patch-whitening conv (+ReLU), and a
# pair (width, "M") a conv block that max-pools before its BatchNorm and ReLU (Conv-Pool-BN-
# ReLU, as in Jordan's airbench): the same kinds of layers, but BatchNorm and ReLU, which cost a
# CPU more time than the convolutions here, see a quarter of the values (1.5x faster training).
# "small" trains on shapes and (Fashion-)MNIST in seconds to minutes on a laptop CPU; "wide"
# has the capacity CIFAR-10 needs; "fast" is the CIFAR-10 net that reaches 90% in 15 minutes
# on a 2-core CPU (docs/training.md, "CIFAR-10 on a laptop CPU"): a whitening stem, then three
# stages of conv - pool - conv at airbench's widths 64, 256, 256; "long" is the same net at
# airbench95's
# widths 128, 384, 384 (2.5x the compute) for the longer CIFAR-10 recipe.
VGG_PLANS = {
    "small": (16, "M", 32, "M", 64, 64),
    "wide": (32, 32, "M", 64, 64, "M", 128, 128, 128),
    "fast": ("W", (64, "M"), 64, (256, "M"), 256, (256, "M"), 256),
    "long": ("W", (128, "M"), 128, (384, "M"), 384, (384, "M"), 384),
    "deep": ("W", (128, "M"), 128, 128, (384, "M"), 384, 384, (512, "M"), 512, 512),
}

RECTIFIERS = (nn.ReLU, nn.Hardtanh)  # nn.ReLU6 is an nn.Hardtanh

WHITENING_CHANNELS = 24  # +/- the 12 eigenvectors of the 2x2x3 patch covariance


class PatchWhitening(nn.Conv2d):
    """A frozen 2x2 convolution whose filters whiten image patches (Coates & Ng 2012; used by
    Jordan's airbench CIFAR-10 speed runs): the eigenvectors e_i of the covariance of
    2x2x3 patches scaled by 1 / sqrt(lambda_i + eps), each with both signs, so the ReLU after
    it keeps both halves. Set once from training images by :meth:`fit`; never trained. Its
    bias starts at zero and is trained: the whitened responses need no BatchNorm, whose cost
    on this largest map slowed training by 12% on a CPU."""

    def __init__(self, in_channels):
        super().__init__(in_channels, WHITENING_CHANNELS, kernel_size=2, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images, eps=5e-4):
        """Set the filters from normalized images (N, C, H, W)."""
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.in_channels * 4).double()
        covariance = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(covariance)
        filters = (vectors.T / torch.sqrt(values[:, None] + eps)).view(-1, self.in_channels, 2, 2)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))

    @torch.no_grad()
    def colouring_filters(self):
        """Filters whose transposed convolution undoes the whitening of each patch: for the
        stem's responses [W x; -W x] of a 2x2x3 patch x (W: the rows e_i / sqrt(lambda_i +
        eps)), the filters 0.5 [P; -P] with P = (W^-1)^T (rows e_i sqrt(lambda_i + eps)) give
        back x. The DeconvNet mirror uses them for this frozen stem (``model.units.mirror``): the
        transposed filters would multiply the fine detail the whitening damped by up to
        1 / sqrt(eps), and every projection would be checkerboard noise."""
        half = self.out_channels // 2
        matrix = self.weight[:half].flatten(1).double()  # (12, 12), one row per filter
        inverse = torch.linalg.pinv(matrix).T.to(self.weight.dtype).view_as(self.weight[:half])
        return 0.5 * torch.cat([inverse, -inverse])


def build_simple(in_channels, num_classes, image_size):
    """The 16-filter teaching net; ``image_size`` fixes the Linear layer's input width."""
    flat_features = 8 * (image_size // 4) * (image_size // 4)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 8, kernel_size=3, padding=1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 8, kernel_size=3, padding=1)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(flat_features, num_classes)),
    ]))


def build_vgg(in_channels, num_classes, plan):
    """A VGG-style net from a layer ``plan`` (see ``VGG_PLANS``), ending in GAP + Linear."""
    layers = OrderedDict()
    channels = in_channels
    conv_count = pool_count = 0
    for step in plan:
        if step == "M":
            pool_count += 1
            layers[f"pool{pool_count}"] = nn.MaxPool2d(2)
            continue
        conv_count += 1
        pool_first = isinstance(step, tuple)
        step = step[0] if pool_first else step
        if step == "W":
            layers[f"conv{conv_count}"] = PatchWhitening(channels)
            layers[f"relu{conv_count}"] = nn.ReLU()
            channels = WHITENING_CHANNELS
            continue
        # The conv has no bias: the BatchNorm after it would cancel one.
        layers[f"conv{conv_count}"] = nn.Conv2d(channels, step, kernel_size=3, padding=1,
                                                bias=False)
        if pool_first:
            pool_count += 1
            layers[f"pool{pool_count}"] = nn.MaxPool2d(2)
        layers[f"bn{conv_count}"] = nn.BatchNorm2d(step)
        layers[f"relu{conv_count}"] = nn.ReLU()
        channels = step
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(channels, num_classes)
    return nn.Sequential(layers)


PROJECT_ARCHS = ("simple", "vgg")

# cnn-viz's own nets and the four torchvision nets of the figures, tests and benchmarks; any
# other torchvision, timm or user's net is an --arch too (``architecture_kind``).
EXAMPLE_ARCHS = PROJECT_ARCHS + ("resnet18", "alexnet", "vgg16", "mobilenet_v2")


def architecture_kind(arch):
    """``project``, ``torchvision``, ``timm`` or ``module`` (the user's own), or raise.

    Raises:
        UserError: a vision transformer (one line says why), or a name nothing knows.
    """
    if arch in PROJECT_ARCHS:
        return "project"
    if is_timm(arch):
        return "timm"
    if is_user_module(arch):
        return "module"
    if is_transformer(arch):
        raise UserError(transformer_refusal(arch))
    if is_torchvision(arch):
        return "torchvision"
    raise UserError(f"unknown architecture '{arch}': give simple, vgg, one of torchvision's "
                    "CNNs (resnet50, densenet121, ...: `--arch list` names them), "
                    "timm:NAME, or your own path/to/net.py:Name or package.module:Name")


def architecture_list():
    """Every --arch this cnn-viz takes by name, for ``--arch list``: lines of text."""
    from model.nets.zoo import torchvision_archs

    return ["cnn-viz's own: simple, vgg",
            "torchvision's CNNs: " + ", ".join(torchvision_archs()),
            "timm's CNNs: timm:NAME (for example timm:resnet18, timm:efficientnet_b0)",
            "your own nn.Module: path/to/net.py:Name or package.module:Name (a class or a "
            "function that returns the net)"]


def build_model(arch, in_channels, num_classes, image_size, vgg_plan="small", small_stem=None,
                imagenet_input=False):
    """Build a network from the plain arguments a checkpoint stores (``model_args``).

    Args:
        arch: ``simple``, ``vgg``, a torchvision CNN's name (``model.nets.zoo``),
            ``timm:NAME`` or the user's ``file.py:Name`` / ``package.module:Name``
            (``model.nets.imported``).
        in_channels: 1 (MNIST, Fashion-MNIST) or 3 (CIFAR-10, shapes, photos).
        num_classes: size of the output layer.
        image_size: side of the square input images (28, 32, 224, ...).
        vgg_plan: key of ``VGG_PLANS`` (used by ``vgg`` only).
        small_stem: torchvision and timm nets, see ``model.nets.zoo.build_torchvision``.
        imagenet_input: torchvision nets that take its ImageNet weights (GoogLeNet's and
            Inception v3's ``transform_input``).

    Returns:
        A module mapping (N, in_channels, S, S) to logits (N, num_classes), its input
        declared (``model.nets.anatomy.declare_input``): an ``nn.Sequential`` for the
        project's nets.
    """
    kind = architecture_kind(arch)
    if kind == "torchvision":
        return build_torchvision(arch, in_channels, num_classes, image_size, small_stem,
                                 imagenet_input)
    if kind == "timm":
        return build_timm(arch, in_channels, num_classes, image_size, small_stem)
    if kind == "module":
        return build_user_module(arch, in_channels, num_classes, image_size)
    if arch == "simple":
        model = build_simple(in_channels, num_classes, image_size)
    else:
        if vgg_plan not in VGG_PLANS:
            raise UserError(f"unknown VGG plan '{vgg_plan}'; choose from {', '.join(VGG_PLANS)}")
        model = build_vgg(in_channels, num_classes, VGG_PLANS[vgg_plan])
    return declare_input(model, in_channels, image_size)
