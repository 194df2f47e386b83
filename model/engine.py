"""Training and evaluation loops, batch streaming, augmentation and per-dataset recipes.

Batches are sliced from an :class:`~model.datasets.ImageDataset`'s uint8 tensor, moved to the
device, then converted, augmented and normalized there. Every random choice of an epoch (order
and augmentation) comes from a generator seeded with ``(seed, epoch)``, so an epoch is the same
whether training ran straight through or was resumed from a checkpoint.
"""
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed
from .architectures import PatchWhitening
from .errors import UserError
from .folders import FolderDataset, visiting_order
from .optim import learning_rate_at, set_learning_rate
from .zoo import TORCHVISION_ARCHS


class TrainingDivergedError(UserError):
    """The training loss became NaN or infinite, so the weights are useless."""


@dataclass(frozen=True)
class Recipe:
    """Training settings for one dataset and architecture.

    ``epochs`` to ``augment`` are defaults the command line can override; the rest is fixed
    per recipe (see README, "CIFAR-10 on a laptop CPU", for what each is worth).
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
    alternate_flip: bool = False  # mirror each image in every other epoch (airbench)
    label_smoothing: float = 0.0  # Szegedy et al. 2016, sec. 7
    schedule: str = "cosine"  # after the linear warm-up: "cosine" or "linear" decay to zero
    warmup: float = 0.15  # fraction of the steps
    warmup_start: float = 0.0  # the first step's learning rate, as a fraction of the peak
    momentum: float = 0.9  # SGD with Nesterov momentum
    bn_momentum: float = 0.1
    bn_scale_frozen: bool = False  # BatchNorm weights stay 1: a shift only (airbench)
    norm_bias_lr_scale: float = 1.0  # BatchNorm biases learn this much faster (airbench: 64)
    identity_init: bool = False  # 3x3 convs start as identity on their first channels (Dirac)
    bfloat16: bool = False  # autocast to bfloat16 where the device computes it fast
    channels_last: bool = False  # batches in channels-last memory order (faster with bfloat16)
    test_views: str = "image"  # the final test accuracy's views: see TEST_VIEWS
    epoch_test_images: int = None  # test epochs before the last on this many, spread (None: all)


# Keyed by (dataset, arch). The VGG recipes use the one-cycle peak learning rate that BatchNorm
# tolerates; the simple net has no BatchNorm and needs a smaller one. The CIFAR-10 VGG recipe
# is Jordan's airbench94 (2024) with ReLU and global average pooling (the methods need both):
# its learning rate 11.5 and weight decay 0.0153 "per 1024 examples" become, for the mean loss
# of PyTorch's SGD at batch 1024 and momentum 0.85, lr = 11.5 / (1 + 1 / 0.15) = 1.5 and
# weight decay = 0.0153 / (1 + 1 / 0.15) / 1.5 = 1.33e-3.
RECIPES = {
    ("shapes", "vgg"): Recipe(epochs=3, batch_size=64, lr=0.1),
    ("shapes", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("mnist", "vgg"): Recipe(epochs=4, batch_size=64, lr=0.1),
    ("mnist", "simple"): Recipe(epochs=5, batch_size=64, lr=0.05),
    ("fashion_mnist", "vgg"): Recipe(epochs=12, batch_size=64, lr=0.1),
    ("fashion_mnist", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("cifar10", "vgg"): Recipe(epochs=16, batch_size=1024, lr=1.5, weight_decay=1.33e-3,
                               augment=True, vgg_plan="fast", crop_padding=2, reflect=True,
                               alternate_flip=True, label_smoothing=0.2, schedule="linear",
                               warmup=0.23, warmup_start=0.2, momentum=0.85, bn_momentum=0.4,
                               bn_scale_frozen=True, norm_bias_lr_scale=64.0,
                               identity_init=True, bfloat16=True, channels_last=True,
                               test_views="flip-translate", epoch_test_images=2000),
    ("cifar10", "simple"): Recipe(epochs=20, batch_size=128, lr=0.05, augment=True),
    # An image folder is augmented as ImageNet is (model.folders): random resized crops.
    ("imagefolder", "vgg"): Recipe(epochs=30, batch_size=64, lr=0.1, augment=True),
    ("imagefolder", "simple"): Recipe(epochs=30, batch_size=64, lr=0.05, augment=True),
}
# torchvision's nets (``model.zoo``) get one plain recipe per dataset, with augmentation on
# photos; AlexNet and VGG16 have no BatchNorm and need a 5x smaller learning rate to start
# training at all.
TORCHVISION_EPOCHS = {"shapes": 4, "mnist": 3, "fashion_mnist": 10, "cifar10": 30,
                      "imagefolder": 30}
RECIPES.update({
    (dataset, arch): Recipe(epochs=epochs, batch_size=128,
                            lr=0.01 if arch in ("alexnet", "vgg16") else 0.05,
                            augment=dataset in ("cifar10", "imagefolder"))
    for dataset, epochs in TORCHVISION_EPOCHS.items() for arch in TORCHVISION_ARCHS})
# Named alternatives (train_cnn.py --recipe NAME), keyed by (dataset, arch, name). "long" is
# for users with an hour of CPU or a GPU: airbench95's widths and learning rate (10 instead of
# 11.5 per 1024 examples), and 2.5x the epochs for what ReLU and average pooling give away
# (92.17% with test-time views, README "CIFAR-10 on a laptop CPU").
NAMED_RECIPES = {
    ("cifar10", "vgg", "long"): replace(RECIPES[("cifar10", "vgg")], epochs=40, lr=1.3,
                                        vgg_plan="long"),
    # "deep": airbench96's third conv per stage (without its residual connections), 4 px
    # translation, Cutout and lr (9 per 1024 examples): 92.20% with test-time views, no better
    # than "long"; 45 epochs gave 92.31%. The JPEG copy costs ~3.3 points (README).
    ("cifar10", "vgg", "deep"): replace(RECIPES[("cifar10", "vgg")], epochs=30, lr=1.17,
                                        vgg_plan="deep", crop_padding=4, cutout=12),
}
DEFAULT_RECIPE = "default"


def recipe_names(dataset, arch):
    """The recipes ``recipe_for`` accepts for this dataset and arch, the default first."""
    return [DEFAULT_RECIPE] + [name for (d, a, name) in NAMED_RECIPES if (d, a) == (dataset, arch)]


def recipe_for(dataset, arch, name=DEFAULT_RECIPE):
    """The training recipe called ``name`` for this dataset and arch."""
    if name == DEFAULT_RECIPE:
        return RECIPES[(dataset, arch)]
    if (dataset, arch, name) not in NAMED_RECIPES:
        raise UserError(f"no recipe '{name}' for {arch} on {dataset}; choose from "
                        f"{', '.join(recipe_names(dataset, arch))}")
    return NAMED_RECIPES[(dataset, arch, name)]


def epoch_generator(seed, epoch):
    """The generator for every random choice of one epoch, derived from (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def random_crop_flip(images, generator, padding=4, reflect=False, flip=None):
    """Random crop of the padded image plus random horizontal flip, per image, batched.

    The standard CIFAR-10 augmentation (He et al. 2016, sec. 4.2: zero padding 4) on a uint8
    or float batch; with ``reflect`` the border is mirrored instead (a translation by up to
    ``padding`` pixels that invents no black frame, as in Jordan's airbench).

    Args:
        images: (N, C, H, W).
        generator: CPU generator for the offsets (and the flips, unless given).
        flip: optional (N,) bool tensor, which images to mirror.
    Returns:
        (N, C, H, W), same dtype and device.
    """
    n, _, height, width = images.shape
    offset_y = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    if flip is None:
        flip = torch.rand(n, generator=generator) < 0.5
    flip = flip.cpu()[:, None]
    cols = torch.arange(width)[None, :]
    cols = torch.where(flip, width - 1 - cols, cols) + offset_x  # (N, W) in padded coordinates
    rows = torch.arange(height)[None, :] + offset_y  # (N, H)
    device = images.device
    batch_index = torch.arange(n, device=device)[:, None, None]
    if reflect:  # index the image itself, mirrored at the border: (N, H), (N, W)
        rows, cols = _reflect(rows - padding, height), _reflect(cols - padding, width)
        source = images
    else:
        source = F.pad(images, (padding,) * 4)  # (N, C, H+2p, W+2p)
    crops = source[batch_index, :, rows.to(device)[:, :, None], cols.to(device)[:, None, :]]
    return crops.permute(0, 3, 1, 2)  # advanced indexing put channels last: (N, H, W, C)


def _reflect(index, size):
    """Indices outside 0..size-1 mirrored at the border (F.pad's "reflect" mode)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def cutout(images, generator, size):
    """Set one random ``size`` x ``size`` square of each normalized image to zero, the
    dataset's mean colour (DeVries & Taylor 2017, "Improved Regularization of Convolutional
    Neural Networks with Cutout"; the square lies inside the image, as in airbench96).

    Args:
        images: (N, C, H, W) normalized batch; not changed.
        generator: CPU generator for the squares' corners.
    """
    n, _, height, width = images.shape
    top = torch.randint(0, height - size + 1, (n, 1, 1), generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1, 1), generator=generator)
    rows = torch.arange(height)[None, :, None]
    cols = torch.arange(width)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside[:, None].to(images.device), 0.0)


def iterate_batches(dataset, batch_size, device, generator=None, augment=False, padding=4,
                    reflect=False, flips=None, cutout_size=0, indices=None, part=None):
    """Yield normalized (inputs, labels) batches on ``device``.

    Args:
        dataset: an :class:`~model.datasets.ImageDataset`, or a
            :class:`~model.folders.FolderDataset` (decoded by a DataLoader; ``augment`` is
            then its random resized crop and flip, and the other augmentation flags unused).
        generator: shuffles (and drives augmentation) when given; None keeps the order.
        augment: apply :func:`random_crop_flip` (needs ``generator``) with ``padding`` and
            ``reflect``.
        flips: optional (len(dataset),) bool tensor, which images to mirror (else at random).
        cutout_size: with ``augment``, the side of :func:`cutout`'s square (0: none).
        indices: the images to yield, in this order (default: all).
        part: maps a batch's size to the slice of it to yield (this process's part of a
            global batch, ``model.distributed.Processes.part``); its random augmentation is
            the whole batch's, so that the parts of all processes make up the one-process
            batch.
    """
    if isinstance(dataset, FolderDataset):
        yield from dataset.batches(batch_size, device, generator, augment, indices, part)
        return
    order = visiting_order(len(dataset), generator, indices)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        # Augmenting the whole batch and keeping a part costs a few ms per step; drawing only
        # the part's random numbers would change the batch's draws.
        images = dataset.images[index].to(device, non_blocking=True)
        if augment:
            images = random_crop_flip(images, generator, padding, reflect,
                                      None if flips is None else flips[index])
        inputs = dataset.info.normalize(images)
        if augment and cutout_size:
            inputs = cutout(inputs, generator, cutout_size)
        rows = slice(None) if part is None else part(len(index))
        yield inputs[rows], dataset.labels[index[rows]].to(device, non_blocking=True)


@torch.no_grad()
def prepare_model(model, recipe, train_set, device):
    """Before the first step (and before :func:`~model.optim.make_optimizer`), as the recipe
    says: BatchNorm momentum and frozen scales, a patch-whitening stem
    (``model.architectures.PatchWhitening``) fitted to 5,000 training images spread over the
    split (class folders come sorted by class), identity-initialized 3x3 convs and the memory
    order."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = recipe.bn_momentum
            module.weight.requires_grad_(not recipe.bn_scale_frozen)
        if isinstance(module, PatchWhitening):
            sample = train_set.images[::max(1, len(train_set) // 5000)][:5000]
            module.fit(train_set.info.normalize(sample.to(device)))
        elif recipe.identity_init and isinstance(module, nn.Conv2d):
            identity_init(module)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)


def identity_init(conv):
    """Make the first ``in_channels`` filters of a 3x3 conv pass their input channel through
    unchanged (``torch.nn.init.dirac_``); the others keep their random start. Deep plain nets
    then start close to the identity, which airbench found trains faster (as the identity
    paths of ResNets do)."""
    if conv.kernel_size == (3, 3) and conv.out_channels >= conv.in_channels:
        nn.init.dirac_(conv.weight[:conv.in_channels])


def fast_bfloat16(device):
    """Whether ``device`` computes bfloat16 convolutions faster than float32: a CUDA GPU that
    supports it, or a CPU with AMX tiles (Intel Sapphire Rapids and later; without AMX, bfloat16
    runs slower than float32 on a CPU, so it is not used)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())  # a torch without the probe stays in float32


def autocast(device, bfloat16):
    """bfloat16 autocast (BatchNorm and the loss stay float32) when asked for and fast on
    ``device``; otherwise a context that changes nothing."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=bfloat16 and fast_bfloat16(device))


def alternating_flips(count, seed, epoch):
    """Which of ``count`` training images to mirror in ``epoch``: a random half (fixed by
    ``seed``) in odd epochs, the other half in even ones. Airbench's alternating flip: every
    two epochs show each image both ways, where independent coin flips would show about a
    quarter of them one way only."""
    first_half = torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first_half if epoch % 2 else ~first_half


def train_one_epoch(model, optimizer, dataset, *, epoch, epochs, seed, batch_size, peak_lr,
                    device, augment=False, progress=True, recipe=None):
    """Train for one epoch with the one-cycle schedule over ``epochs`` epochs.

    ``recipe`` (a :class:`Recipe`) gives the augmentation's padding, label smoothing, the
    schedule's shape and bfloat16; without it, the defaults of :class:`Recipe`.

    Under torchrun (``model`` wrapped by :func:`for_training`) each process trains on its
    part of every global batch of ``batch_size`` images. Its loss is the sum over its part
    times size / (global batch), so that DistributedDataParallel's mean of the processes'
    gradients is the gradient of the global batch's mean loss, as in one process; loss and
    accuracy are summed over the processes.

    Returns:
        dict with ``train_loss``, ``train_accuracy`` and ``images_per_s``.

    Raises:
        TrainingDivergedError: the loss or the weights became NaN or infinite.
    """
    recipe = recipe or Recipe(epochs, batch_size, peak_lr)
    processes = distributed.current()
    model.train()
    generator = epoch_generator(seed, epoch)
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    total_steps = epochs * steps_per_epoch
    step = (epoch - 1) * steps_per_epoch
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss and correct of my parts
    flips = alternating_flips(len(dataset), seed, epoch) if recipe.alternate_flip else None
    batches = iterate_batches(dataset, batch_size, device, generator, augment,
                              recipe.crop_padding, recipe.reflect, flips, recipe.cutout,
                              part=processes.part if processes.several else None)
    bar = tqdm(batches,
               total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False,
               disable=not (progress and processes.main), unit="batch")
    started = time.perf_counter()
    for batch, (inputs, labels) in enumerate(bar):
        set_learning_rate(optimizer, learning_rate_at(step, total_steps, peak_lr, recipe.warmup,
                                                      recipe.schedule, recipe.warmup_start))
        if recipe.channels_last:
            inputs = fast_layout(inputs)
        with autocast(device, recipe.bfloat16):
            logits = model(inputs).float()
        global_count = min(batch_size, len(dataset) - batch * batch_size)
        loss_sum = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing,
                                   reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (processes.size / global_count)).backward()
        optimizer.step()
        step += 1
        sums += torch.stack([loss_sum.detach().double(),
                             (logits.argmax(1) == labels).sum().double()])
        seen = min((batch + 1) * batch_size, len(dataset))  # by every process together
        if step % 20 == 0 or seen == len(dataset):  # syncing every step would slow CUDA
            mean_loss, accuracy = (_summed(sums) / seen).tolist()
            _check_finite(mean_loss, epoch)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracy:.3f}")
    elapsed = time.perf_counter() - started
    mean_loss, accuracy = (_summed(sums) / len(dataset)).tolist()
    _check_finite(mean_loss, epoch)
    _check_finite_weights(model, epoch)  # the last step can break them after a finite loss
    return {"train_loss": mean_loss, "train_accuracy": accuracy,
            "images_per_s": len(dataset) / elapsed}


def _summed(sums):
    """``sums`` added up over the processes (a copy: the running sums stay this process's)."""
    return distributed.sum_over_processes(sums.clone())


def for_training(model, device):
    """``model`` as trained by one process: itself; under torchrun, wrapped in
    DistributedDataParallel, whose backward averages the gradients over the processes.

    BatchNorm: on CUDA the layers become ``SyncBatchNorm``, so that the batch statistics are
    the global batch's, as in one process. The CPU has no SyncBatchNorm: there each process
    normalizes with the statistics of its own part of the batch (a "ghost batch" of
    batch / processes images), and every forward pass starts from rank 0's running statistics
    (DDP's ``broadcast_buffers``). Rank 0's are the ones kept (:func:`fit`).
    """
    if not distributed.current().several:
        return model
    if torch.device(device).type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the same parameters
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if torch.device(device).type == "cuda" else None)


def _check_finite(loss, epoch):
    if not math.isfinite(loss):
        raise TrainingDivergedError(f"the training loss became {loss} in epoch {epoch}; "
                                    "try a smaller --lr")


def _check_finite_weights(model, epoch):
    """Refuse weights (or BatchNorm statistics) that became NaN or infinite."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingDivergedError(f"the weights became NaN or infinite ({name}) in "
                                        f"epoch {epoch}; try a smaller --lr")


def fast_layout(images):
    """``images`` stored channels-last (same values, other memory order).

    For the large batches of perturbed copies that occlusion, Score-CAM and deletion /
    insertion send through the net, the CPU convolution and max-pool kernels run about 1.5x
    faster on this layout than on the default one.
    """
    return images.contiguous(memory_format=torch.channels_last)


VARIANT_PIXELS = 64 * 224 * 224  # pixels per batch of perturbed copies (see variant_batch)


def variant_batch(batch_size, images):
    """How many perturbed copies of ``images`` (N, C, H, W) to send through the net at once
    (occlusion, Score-CAM, Ablation-CAM, deletion / insertion): ``batch_size``, at most
    ``VARIANT_PIXELS`` pixels. At 32 px that is the 256 asked for; at 224 px it is 64: 256
    copies' activations (ResNet-18: about 3 GB) overflow every cache, and occlusion and
    Score-CAM ran 1.34x and 1.69x the time of their forward passes instead of 1.0-1.16x
    (bench/speed_224.py)."""
    return max(1, min(batch_size, VARIANT_PIXELS // (images.shape[-2] * images.shape[-1])))


TEST_VIEWS = ("image", "flip", "flip-translate")


def view_logits(model, inputs, views="image"):
    """Logits of ``inputs`` averaged over test-time views (airbench's augmentation levels):

    - ``image``: the image alone (what the methods explain);
    - ``flip``: the mean over the image and its mirror image;
    - ``flip-translate``: half the ``flip`` mean, plus a quarter each of the ``flip`` mean of
      the image shifted by one pixel down-right and up-left (reflected border).
    """
    assert views in TEST_VIEWS, views

    def logits_of(images):  # bfloat16 (autocast) up to float32, float64 kept
        logits = model(images)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    if views == "image":
        return logits_of(inputs)

    def mirror_mean(images):
        return 0.5 * (logits_of(images) + logits_of(images.flip(3)))

    logits = mirror_mean(inputs)
    if views == "flip-translate":
        height, width = inputs.shape[-2:]
        padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
        logits = 0.5 * logits + 0.25 * (mirror_mean(padded[..., :height, :width]) +
                                        mirror_mean(padded[..., 2:, 2:]))
    return logits


@torch.no_grad()
def loss_and_accuracy(model, dataset, device, batch_size=512, views="image", bfloat16=False,
                      channels_last=False):
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``.

    Under torchrun each process evaluates whole batches (``Processes.my_indices``) and the sums
    are added up over the processes.

    Args:
        views: classify by the mean logits over these test-time views (:func:`view_logits`;
            the methods always explain the model on the image alone).
        bfloat16: autocast where fast (:func:`autocast`).
        channels_last: batches in channels-last order (:func:`fast_layout`).

    Returns:
        dict with ``test_loss`` and ``test_accuracy``.
    """
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct
    mine = distributed.current().my_indices(len(dataset), batch_size)
    for inputs, labels in iterate_batches(dataset, batch_size, device, indices=mine):
        if channels_last:
            inputs = fast_layout(inputs)
        with autocast(device, bfloat16):
            logits = view_logits(model, inputs, views)
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                             (logits.argmax(1) == labels).sum().double()])
    loss_sum, correct = distributed.sum_over_processes(sums).tolist()
    return {"test_loss": loss_sum / len(dataset), "test_accuracy": correct / len(dataset)}


def fit(model, optimizer, train_set, test_set, *, first_epoch, epochs, seed, batch_size,
        peak_lr, device, augment=False, progress=True, recipe=None):
    """Train epochs ``first_epoch..epochs``, yielding each epoch's metrics after evaluating it
    (``recipe``: see :func:`train_one_epoch`).

    Under torchrun ``model`` is trained wrapped by :func:`for_training`, and tested as it is
    (the processes hold the same weights), each process on whole batches.

    Every epoch is tested on the image alone: the epochs before the last on the recipe's
    ``epoch_test_images`` test images spread over the split (``ImageDataset.spread``), the
    last on all. After the last, a recipe with test-time views (``test_views``) also gives
    ``tta_accuracy`` with them.

    Yields:
        dict with ``epoch``, ``train_loss``, ``train_accuracy``, ``images_per_s``,
        ``test_loss``, ``test_accuracy``, ``test_images`` (how many were tested),
        ``seconds`` (training plus evaluation), and after the last epoch maybe
        ``tta_accuracy``.
    """
    recipe = recipe or Recipe(epochs, batch_size, peak_lr)
    speed = {"bfloat16": recipe.bfloat16, "channels_last": recipe.channels_last}
    trained = for_training(model, device)
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        metrics = train_one_epoch(trained, optimizer, train_set, epoch=epoch, epochs=epochs,
                                  seed=seed, batch_size=batch_size, peak_lr=peak_lr,
                                  device=device, augment=augment, progress=progress,
                                  recipe=recipe)
        distributed.share_buffers(model)  # evaluate and save rank 0's running statistics
        last = epoch == epochs
        tested = test_set if last else test_set.spread(recipe.epoch_test_images)
        metrics.update(loss_and_accuracy(model, tested, device, **speed), test_images=len(tested))
        if last and recipe.test_views != "image":
            metrics["tta_accuracy"] = loss_and_accuracy(model, test_set, device,
                                                        views=recipe.test_views,
                                                        **speed)["test_accuracy"]
        metrics.update(epoch=epoch, seconds=time.perf_counter() - started)
        yield metrics
