"""The training loop: preparing a model for its recipe, one epoch of SGD, and ``fit`` over the
epochs with a checkpoint after each.

Every random choice of an epoch (order and augmentation) comes from a generator seeded with
``(seed, epoch)``, so an epoch is the same whether training ran straight through or was resumed
from a checkpoint.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from model.data.augmentation import alternating_flips, epoch_generator
from model.data.batches import iterate_batches
from model.errors import UserError
from model.nets.architectures import PatchWhitening
from model.runtime import distributed
from model.runtime.device import autocast, fast_layout
from model.training.optim import learning_rate_at, set_learning_rate
from model.training.recipes import Recipe
from model.training.views import loss_and_accuracy


class TrainingDivergedError(UserError):
    """The training loss became NaN or infinite, so the weights are useless."""


@torch.no_grad()
def prepare_model(model, recipe, train_set, device):
    """Before the first step (and before :func:`~model.optim.make_optimizer`), as the recipe
    says: BatchNorm momentum and frozen scales, a patch-whitening stem
    (``model.nets.architectures.PatchWhitening``) fitted to 5,000 training images spread over the
    split (class folders come sorted by class), identity-initialized 3x3 convs or He et al.'s
    initialization, and the memory order."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = recipe.bn_momentum
            module.weight.requires_grad_(not recipe.bn_scale_frozen)
        if isinstance(module, PatchWhitening):
            sample = train_set.images[::max(1, len(train_set) // 5000)][:5000]
            module.fit(train_set.info.normalize(sample.to(device)))
        elif recipe.identity_init and isinstance(module, nn.Conv2d):
            identity_init(module)
    if recipe.he_init:
        he_init(model)
    if recipe.first_conv_std is not None:
        first_conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
        nn.init.normal_(first_conv.weight, std=recipe.first_conv_std)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)


def he_init(model):
    """He et al. 2015, eq. 10: every conv and linear weight drawn from N(0, 2 / fan-in), so
    that each ReLU layer keeps its input's variance, biases zero; the last linear layer
    (the logits) from N(0, 0.01^2), so that training starts from near-uniform predictions.
    PyTorch's default draws (uniform, variance 1 / (3 fan-in)) shrink the signal by sqrt(6)
    per layer: a net without BatchNorm such as AlexNet then starts with vanishing gradients
    (on Imagenette at 128 px its loss stayed at ln 10 for a whole epoch)."""
    layers = [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        if layer is layers[-1] and isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.01)
        else:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


@torch.no_grad()
def renormalize_filters(model, radius):
    """Zeiler & Fergus 2014, sec. 3: "renormalize each filter in the convolutional layers whose
    RMS value exceeds a fixed radius of 10^-1 to this fixed radius". Without it a few first-layer
    filters grow to dominate (their Fig. 6 (c)); filters below the radius are left as they are."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight
            rms = weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            weight.mul_((radius / rms).clamp(max=1.0))


def identity_init(conv):
    """Make the first ``in_channels`` filters of a 3x3 conv pass their input channel through
    unchanged (``torch.nn.init.dirac_``); the others keep their random start. Deep plain nets
    then start close to the identity, which airbench found trains faster (as the identity
    paths of ResNets do)."""
    if conv.kernel_size == (3, 3) and conv.out_channels >= conv.in_channels:
        nn.init.dirac_(conv.weight[:conv.in_channels])


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
                              part=processes.part if processes.several else None,
                              min_crop_area=recipe.min_crop_area)
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
        if recipe.filter_rms_radius is not None:
            renormalize_filters(model, recipe.filter_rms_radius)
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


def train_stem_bias(model, recipe, epoch):
    """Let the whitening stem's bias train in the recipe's first ``stem_bias_epochs`` epochs
    only, as airbench94_muon does (there its learning rate also decays to zero over them):
    afterwards the first 3x3 conv needs no gradient for its input (epochs of the CIFAR-10
    recipe 91-95 s instead of 100-104 s on a 2-core Zen 5). Returns whether this changed which
    parameters train."""
    if recipe.stem_bias_epochs is None:
        return False
    changed = False
    for module in model.modules():
        if isinstance(module, PatchWhitening):
            wanted = epoch <= recipe.stem_bias_epochs
            changed |= module.bias.requires_grad != wanted
            module.bias.requires_grad_(wanted)
    return changed


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
    trained = None
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        if train_stem_bias(model, recipe, epoch) or trained is None:
            trained = for_training(model, device)  # DDP needs to know what gets gradients
        metrics = train_one_epoch(trained, optimizer, train_set, epoch=epoch, epochs=epochs,
                                  seed=seed, batch_size=batch_size, peak_lr=peak_lr,
                                  device=device, augment=augment, progress=progress,
                                  recipe=recipe)
        distributed.share_buffers(model)  # evaluate and save rank 0's running statistics
        last = epoch == epochs
        tested = test_set if last else test_set.spread(recipe.epoch_test_images)
        metrics.update(loss_and_accuracy(model, tested, device,  # the last: tta_accuracy too
                                         views=recipe.test_views if last else "image", **speed),
                       test_images=len(tested))
        metrics.update(epoch=epoch, seconds=time.perf_counter() - started)
        yield metrics
