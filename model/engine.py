"""Training and evaluation loops, batch streaming, augmentation and per-dataset recipes.

Batches are sliced from an :class:`~model.datasets.ImageDataset`'s uint8 tensor, moved to the
device, then converted, augmented and normalized there. Every random choice of an epoch (order
and augmentation) comes from a generator seeded with ``(seed, epoch)``, so an epoch is the same
whether training ran straight through or was resumed from a checkpoint.
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .architectures import PatchWhitening
from .errors import UserError


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
    label_smoothing: float = 0.0  # Szegedy et al. 2016, sec. 7
    schedule: str = "cosine"  # after the linear warm-up: "cosine" or "linear" decay to zero
    warmup: float = 0.15  # fraction of the steps
    bn_momentum: float = 0.1
    bfloat16: bool = False  # autocast to bfloat16 where the device computes it fast
    channels_last: bool = False  # batches in channels-last memory order (faster with bfloat16)
    test_flip: bool = False  # test accuracy from the mean logits of the image and its mirror


# Keyed by (dataset, arch). The VGG recipes use the one-cycle peak learning rate that BatchNorm
# tolerates; the simple net has no BatchNorm and needs a smaller one.
RECIPES = {
    ("shapes", "vgg"): Recipe(epochs=3, batch_size=64, lr=0.1),
    ("shapes", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("mnist", "vgg"): Recipe(epochs=4, batch_size=64, lr=0.1),
    ("mnist", "simple"): Recipe(epochs=5, batch_size=64, lr=0.05),
    ("fashion_mnist", "vgg"): Recipe(epochs=12, batch_size=64, lr=0.1),
    ("fashion_mnist", "simple"): Recipe(epochs=10, batch_size=64, lr=0.05),
    ("cifar10", "vgg"): Recipe(epochs=12, batch_size=512, lr=0.2, augment=True,
                               vgg_plan="fast", crop_padding=2, reflect=True,
                               label_smoothing=0.2, schedule="linear", warmup=0.2,
                               bn_momentum=0.4, bfloat16=True, channels_last=True,
                               test_flip=True),
    ("cifar10", "simple"): Recipe(epochs=20, batch_size=128, lr=0.05, augment=True),
}


def epoch_generator(seed, epoch):
    """The generator for every random choice of one epoch, derived from (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def random_crop_flip(images, generator, padding=4, reflect=False):
    """Random crop of the padded image plus random horizontal flip, per image, batched.

    The standard CIFAR-10 augmentation (He et al. 2016, sec. 4.2: zero padding 4) on a uint8
    or float batch; with ``reflect`` the border is mirrored instead (a translation by up to
    ``padding`` pixels that invents no black frame, as in Jordan's airbench).

    Args:
        images: (N, C, H, W).
        generator: CPU generator for the offsets and flips.
    Returns:
        (N, C, H, W), same dtype and device.
    """
    n, _, height, width = images.shape
    offset_y = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
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


def iterate_batches(dataset, batch_size, device, generator=None, augment=False, padding=4,
                    reflect=False):
    """Yield normalized (inputs, labels) batches on ``device``.

    Args:
        dataset: an :class:`~model.datasets.ImageDataset`.
        generator: shuffles (and drives augmentation) when given; None keeps the order.
        augment: apply :func:`random_crop_flip` (needs ``generator``) with ``padding`` and
            ``reflect``.
    """
    count = len(dataset)
    order = torch.randperm(count, generator=generator) if generator is not None else None
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(
            start, start + batch_size)
        images = dataset.images[index].to(device, non_blocking=True)
        if augment:
            images = random_crop_flip(images, generator, padding, reflect)
        yield dataset.info.normalize(images), dataset.labels[index].to(device, non_blocking=True)


def learning_rate_at(step, total_steps, peak_lr, warmup_fraction=0.15, schedule="cosine"):
    """One-cycle schedule: linear warm-up to ``peak_lr``, then decay to zero.

    Warm-up as in Goyal et al. 2017 (sec. 2.2); ``cosine`` annealing as in Loshchilov & Hutter
    2017 (Eq. 5 with a single cycle): lr = peak/2 * (1 + cos(pi * t)), t the fraction of decay
    done; ``linear``: lr = peak * (1 - t), the short-schedule choice of Smith's one-cycle runs.
    A pure function of the step, so a resumed run needs no scheduler state.
    """
    warmup_steps = max(1, int(warmup_fraction * total_steps))
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak_lr * (1.0 - progress)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def prepare_model(model, recipe, train_set, device):
    """Before the first step: the recipe's BatchNorm momentum and memory order, and a patch-
    whitening stem (``model.architectures.PatchWhitening``) fitted to 5,000 training images
    spread over the split (class folders come sorted by class)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = recipe.bn_momentum
        if isinstance(module, PatchWhitening):
            sample = train_set.images[::max(1, len(train_set) // 5000)][:5000]
            module.fit(train_set.info.normalize(sample.to(device)))
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)


def make_optimizer(model, lr, weight_decay):
    """SGD with Nesterov momentum over the trainable parameters; no weight decay on biases and
    BatchNorm parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # not a frozen stem
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9, nesterov=True)


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


def train_one_epoch(model, optimizer, dataset, *, epoch, epochs, seed, batch_size, peak_lr,
                    device, augment=False, progress=True, recipe=None):
    """Train for one epoch with the one-cycle schedule over ``epochs`` epochs.

    ``recipe`` (a :class:`Recipe`) gives the augmentation's padding, label smoothing, the
    schedule's shape and bfloat16; without it, the defaults of :class:`Recipe`.

    Returns:
        dict with ``train_loss``, ``train_accuracy`` and ``images_per_s``.

    Raises:
        TrainingDivergedError: the loss or the weights became NaN or infinite.
    """
    recipe = recipe or Recipe(epochs, batch_size, peak_lr)
    model.train()
    generator = epoch_generator(seed, epoch)
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    step = (epoch - 1) * steps_per_epoch
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    batches = iterate_batches(dataset, batch_size, device, generator, augment,
                              recipe.crop_padding, recipe.reflect)
    bar = tqdm(batches,
               total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False,
               disable=not progress, unit="batch")
    started = time.perf_counter()
    for inputs, labels in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, epochs * steps_per_epoch, peak_lr,
                                           recipe.warmup, recipe.schedule)
        if recipe.channels_last:
            inputs = fast_layout(inputs)
        with autocast(device, recipe.bfloat16):
            logits = model(inputs).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if step % 20 == 0 or seen == len(dataset):  # syncing every step would slow CUDA
            mean_loss = loss_sum.item() / seen
            _check_finite(mean_loss, epoch)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{correct.item() / seen:.3f}")
    elapsed = time.perf_counter() - started
    mean_loss = loss_sum.item() / seen
    _check_finite(mean_loss, epoch)
    _check_finite_weights(model, epoch)  # the last step can break them after a finite loss
    return {"train_loss": mean_loss, "train_accuracy": correct.item() / seen,
            "images_per_s": seen / elapsed}


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


@torch.no_grad()
def loss_and_accuracy(model, dataset, device, batch_size=512, flip=False, bfloat16=False,
                      channels_last=False):
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``.

    Args:
        flip: classify by the mean logits of each image and its mirror image (test-time
            augmentation; the methods always explain the model on the image alone).
        bfloat16: autocast where fast (:func:`autocast`).
        channels_last: batches in channels-last order (:func:`fast_layout`).

    Returns:
        dict with ``test_loss`` and ``test_accuracy``.
    """
    model.eval()
    loss_sum, correct = 0.0, 0
    for inputs, labels in iterate_batches(dataset, batch_size, device):
        if channels_last:
            inputs = fast_layout(inputs)
        with autocast(device, bfloat16):
            logits = model(inputs).float()
            if flip:
                logits = 0.5 * (logits + model(inputs.flip(3)).float())
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return {"test_loss": loss_sum / len(dataset), "test_accuracy": correct / len(dataset)}


def fit(model, optimizer, train_set, test_set, *, first_epoch, epochs, seed, batch_size,
        peak_lr, device, augment=False, progress=True, recipe=None):
    """Train epochs ``first_epoch..epochs``, yielding each epoch's metrics after evaluating it
    (``recipe``: see :func:`train_one_epoch`; its ``test_flip`` applies to the test accuracy).

    Yields:
        dict with ``epoch``, ``train_loss``, ``train_accuracy``, ``images_per_s``,
        ``test_loss``, ``test_accuracy`` and ``seconds`` (training plus evaluation).
    """
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        metrics = train_one_epoch(model, optimizer, train_set, epoch=epoch, epochs=epochs,
                                  seed=seed, batch_size=batch_size, peak_lr=peak_lr,
                                  device=device, augment=augment, progress=progress,
                                  recipe=recipe)
        recipe = recipe or Recipe(epochs, batch_size, peak_lr)
        metrics.update(loss_and_accuracy(model, test_set, device, flip=recipe.test_flip,
                                         bfloat16=recipe.bfloat16,
                                         channels_last=recipe.channels_last))
        metrics.update(epoch=epoch, seconds=time.perf_counter() - started)
        yield metrics
