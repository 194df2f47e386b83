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
from model.nets.zoo import TORCHVISION_ARCHS, build_torchvision

ARCHITECTURES = ("simple", "vgg") + TORCHVISION_ARCHS

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


def build_model(arch, in_channels, num_classes, image_size, vgg_plan="small", small_stem=None):
    """Build a network from the plain arguments a checkpoint stores (``model_args``).

    Args:
        arch: one of ``ARCHITECTURES``: the project's nets or torchvision's (``model.nets.zoo``).
        in_channels: 1 (MNIST, Fashion-MNIST) or 3 (CIFAR-10, shapes, photos).
        num_classes: size of the output layer.
        image_size: side of the square input images (28, 32, 224, ...).
        vgg_plan: key of ``VGG_PLANS`` (used by ``vgg`` only).
        small_stem: torchvision nets only, see ``model.zoo.build_torchvision``.

    Returns:
        A module mapping (N, in_channels, S, S) to logits (N, num_classes): an
        ``nn.Sequential`` for the project's nets.
    """
    if arch in TORCHVISION_ARCHS:
        return build_torchvision(arch, in_channels, num_classes, image_size, small_stem)
    if arch == "simple":
        return build_simple(in_channels, num_classes, image_size)
    if arch == "vgg":
        if vgg_plan not in VGG_PLANS:
            raise UserError(f"unknown VGG plan '{vgg_plan}'; choose from {', '.join(VGG_PLANS)}")
        return build_vgg(in_channels, num_classes, VGG_PLANS[vgg_plan])
    raise UserError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
