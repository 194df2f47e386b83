"""Training recipes: the settings per dataset and architecture (``RECIPES``) and the named
alternatives of ``train_cnn.py --recipe`` (``NAMED_RECIPES``)."""
from dataclasses import dataclass, replace

from model.errors import UserError


@dataclass(frozen=True)
class Recipe:
    """Training settings for one dataset and architecture.

    ``epochs`` to ``augment`` are defaults the command line can override; the rest is fixed
    per recipe (see docs/training.md, "CIFAR-10 on a laptop CPU", for what each is worth).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    augment: bool = False
    vgg_plan: str = "small"
    crop_padding: int = 4  # augmentation: random crop of the padded image, and a random flip
    reflect: bool = False  # pad by reflecting the border instead of with zeros
    cutout: int = 0  # augmentation: a random square of this side set to the mean colour
    min_crop_area: float = 0.08  # image folders: random resized crops cover this much or more
    alternate_flip: bool = False  # mirror each image in every other epoch (airbench)
    label_smoothing: float = 0.0  # Szegedy et al. 2016, sec. 7
    schedule: str = "cosine"  # after the linear warm-up: "cosine" or "linear" decay to zero
    warmup: float = 0.15  # fraction of the steps
    warmup_start: float = 0.0  # the first step's learning rate, as a fraction of the peak
    momentum: float = 0.9  # SGD with Nesterov momentum
    optimizer: str = "sgd"  # or "adamw" (weight_decay then decoupled, per step: lr x decay),
    # or "muon": conv filters by Muon (model.training.optim.Muon), the rest by SGD
    muon_lr: float = 0.24  # the conv filters' peak learning rate under Muon (airbench94_muon)
    muon_momentum: float = 0.6
    bn_momentum: float = 0.1
    bn_scale_frozen: bool = False  # BatchNorm weights stay 1: a shift only (airbench)
    norm_bias_lr_scale: float = 1.0  # BatchNorm biases learn this much faster (airbench: 64)
    identity_init: bool = False  # 3x3 convs start as identity on their first channels (Dirac)
    he_init: bool = False  # convs and hidden linear layers drawn as He et al. 2015 (no BatchNorm)
    first_conv_std: float = None  # the first conv drawn from N(0, std^2) (Zeiler & Fergus: 1e-2)
    filter_rms_radius: float = None  # conv filters renormalized to this RMS after each step (Z&F)
    bfloat16: bool = False  # autocast to bfloat16 where the device computes it fast
    channels_last: bool = False  # batches in channels-last memory order (faster with bfloat16)
    stem_bias_epochs: int = None  # the whitening stem's bias trains in these first epochs only
    test_views: str = "image"  # the final test accuracy's views: see TEST_VIEWS
    epoch_test_images: int = None  # test epochs before the last on this many, spread (None: all)


# Keyed by (dataset, arch). The VGG recipes use the one-cycle peak learning rate that BatchNorm
# tolerates; the simple net has no BatchNorm and needs a smaller one.
#
# CIFAR-10's VGG: the SGD recipe is Jordan's airbench94 (2024) with ReLU and global average
# pooling (the methods need both): its learning rate 11.5 and weight decay 0.0153 "per 1024
# examples" become, for the mean loss of PyTorch's SGD at batch 1024 and momentum 0.85,
# lr = 11.5 / (1 + 1 / 0.15) = 1.5 and weight decay = 0.0153 / (1 + 1 / 0.15) / 1.5 = 1.33e-3.
# It needs 16 epochs for 90% (`train_cnn.py --recipe sgd`). The default takes airbench94_muon's
# changes: the conv filters step by Muon (lr 0.24, momentum 0.6), batch 2000 (the SGD groups
# keep lr 1.5 and their weight decay per epoch: 2.67e-3 per step of half as many), a 10%
# warm-up (airbench94_muon has none; the unscaled logits of global average pooling want one)
# and the stem's bias trained in the first 3 epochs only; 7 epochs reach 90.28% and 90.15%
# (seeds 0, 1) with the test-time views (docs/training.md, "CIFAR-10 on a laptop CPU").
CIFAR10_SGD = Recipe(epochs=16, batch_size=1024, lr=1.5, weight_decay=1.33e-3, augment=True,
                     vgg_plan="fast", crop_padding=2, reflect=True, alternate_flip=True,
                     label_smoothing=0.2, schedule="linear", warmup=0.23, warmup_start=0.2,
                     momentum=0.85, bn_momentum=0.4, bn_scale_frozen=True,
                     norm_bias_lr_scale=64.0, identity_init=True, bfloat16=True,
                     channels_last=True, test_views="flip-translate", epoch_test_images=2000)
CIFAR10_MUON = replace(CIFAR10_SGD, epochs=7, batch_size=2000, weight_decay=2.67e-3,
                       optimizer="muon", warmup=0.1, stem_bias_epochs=3)

RECIPES = {
    ("shapes", "vgg"): Recipe(epochs=3, batch_size=64, lr=0.1),
    ("shapes", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("mnist", "vgg"): Recipe(epochs=4, batch_size=64, lr=0.1),
    ("mnist", "simple"): Recipe(epochs=5, batch_size=64, lr=0.05),
    ("fashion_mnist", "vgg"): Recipe(epochs=12, batch_size=64, lr=0.1),
    ("fashion_mnist", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("cifar10", "vgg"): CIFAR10_MUON,
    ("cifar10", "simple"): Recipe(epochs=20, batch_size=128, lr=0.05, augment=True),
    # An image folder is augmented as ImageNet is (model.data.folders): random resized crops.
    ("imagefolder", "vgg"): Recipe(epochs=30, batch_size=64, lr=0.1, augment=True),
    ("imagefolder", "simple"): Recipe(epochs=30, batch_size=64, lr=0.05, augment=True),
}

# Every other net (torchvision's, timm's, the user's own: ``model.nets``) gets one plain recipe
# per dataset, with augmentation on photos; the nets without normalization layers (AlexNet, VGG
# without BN, SqueezeNet) need a 5x smaller learning rate to start training at all.
IMPORTED_EPOCHS = {"shapes": 4, "mnist": 3, "fashion_mnist": 10, "cifar10": 30,
                   "imagefolder": 30}

UNNORMALIZED = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "squeezenet1_0",
                "squeezenet1_1")


def imported_recipe(dataset, arch):
    """The plain recipe of a net that is not cnn-viz's own."""
    return Recipe(epochs=IMPORTED_EPOCHS[dataset], batch_size=128,
                  lr=0.01 if arch in UNNORMALIZED else 0.05,
                  augment=dataset in ("cifar10", "imagefolder"))


RECIPES.update({(dataset, arch): imported_recipe(dataset, arch)
                for dataset in IMPORTED_EPOCHS for arch in ("alexnet", "vgg16")})

# AlexNet on photos (Zeiler & Fergus's figures on Imagenette at 128 px, docs/training.md): it
# has no BatchNorm, and with PyTorch's default draws and SGD its loss stayed at ln 10 for three
# epochs at lr 0.01 and 0.02; He et al.'s initialization and AdamW learn from the first epoch.
# Crops of 35-100% of the area, as fastai's Imagenette baselines use (8% leaves too little of
# a 128-px photo), label smoothing 0.1, bfloat16 where measured fast, and each epoch before
# the last tested on 1,000 photos. Conv filters are capped at Zeiler & Fergus's RMS 0.1, and
# conv1 starts at std 1e-3: AdamW's 2,370 steps move its weights little (from He et al.'s
# std 0.074 they stayed mostly their random start; from Zeiler & Fergus's 1e-2 the RMS grew
# only to 0.012), so a larger start leaves the learned edges and colour blobs (visible after
# a low-pass filter) under white noise, and the DeconvNet projections with them.
RECIPES[("imagefolder", "alexnet")] = replace(
    RECIPES[("imagefolder", "alexnet")], epochs=30, lr=5e-4, weight_decay=0.05,
    optimizer="adamw", he_init=True, first_conv_std=1e-3, filter_rms_radius=0.1, warmup=0.1,
    min_crop_area=0.35, label_smoothing=0.1, bfloat16=True, channels_last=True,
    epoch_test_images=1000)


# Named alternatives (train_cnn.py --recipe NAME), keyed by (dataset, arch, name). "long" is
# for users with an hour of CPU or a GPU: airbench95's widths and learning rate (10 instead of
# 11.5 per 1024 examples), and 2.5x the epochs for what ReLU and average pooling give away
# (92.17% with test-time views, docs/training.md, "CIFAR-10 on a laptop CPU").
NAMED_RECIPES = {
    ("cifar10", "vgg", "sgd"): CIFAR10_SGD,
    ("cifar10", "vgg", "long"): replace(CIFAR10_SGD, epochs=40, lr=1.3, vgg_plan="long"),
    # "deep": airbench96's third conv per stage (without its residual connections), 4 px
    # translation, Cutout and lr (9 per 1024 examples): 92.20% with test-time views, no better
    # than "long"; 45 epochs gave 92.31%. The JPEG copy costs ~3.3 points (docs/training.md).
    ("cifar10", "vgg", "deep"): replace(CIFAR10_SGD, epochs=30, lr=1.17,
                                        vgg_plan="deep", crop_padding=4, cutout=12),
}

DEFAULT_RECIPE = "default"


def recipe_names(dataset, arch):
    """The recipes ``recipe_for`` accepts for this dataset and arch, the default first."""
    return [DEFAULT_RECIPE] + [name for (d, a, name) in NAMED_RECIPES if (d, a) == (dataset, arch)]


def recipe_for(dataset, arch, name=DEFAULT_RECIPE):
    """The training recipe called ``name`` for this dataset and arch."""
    if name == DEFAULT_RECIPE:
        return RECIPES.get((dataset, arch)) or imported_recipe(dataset, arch)
    if (dataset, arch, name) not in NAMED_RECIPES:
        raise UserError(f"no recipe '{name}' for {arch} on {dataset}; choose from "
                        f"{', '.join(recipe_names(dataset, arch))}")
    return NAMED_RECIPES[(dataset, arch, name)]
