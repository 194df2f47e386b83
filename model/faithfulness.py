"""How faithful and how costly is an attribution map? Metrics that need no ground truth.

- Deletion and insertion curves and their areas (Petsiuk et al. 2018, RISE, sec. 4.1).
- Spearman rank correlation between maps, with ties at their average rank.
- Cascading model randomization (Adebayo et al. 2018, sec. 3.1).
- The cost of a method: forward and backward passes per image, and peak memory.

Every function takes and returns tensors; nothing here draws or writes files.
"""
import copy
import ctypes
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torchvision.models.mobilenetv2 import InvertedResidual

from .engine import fast_layout, variant_batch
from .blur import gaussian_blur
from .zoo import RESIDUAL_BLOCKS

EPSILON = 1e-12


def pixel_order(maps, generator=None):
    """Pixel indices of each map from most to least important: (N, H, W) -> (N, H*W).

    Equal values (the flat zero regions of a ReLU'd CAM, say) are ordered at random, with
    ``generator``, so that ties favour no corner of the image.
    """
    flat = maps.flatten(1).float()
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    # A stable sort of the shuffled values keeps the random order within ties.
    order = torch.sort(flat[:, shuffle], dim=1, descending=True, stable=True).indices
    return shuffle[order]


def insertion_start(inputs, sigma=None):
    """The image insertion starts from: a strong Gaussian blur (RISE, sec. 4.1).

    ``sigma`` defaults to an eighth of the image side, so that small objects are gone.
    """
    return gaussian_blur(inputs, sigma or inputs.shape[-1] / 8)


@torch.no_grad()
def deletion_insertion_curves(model, inputs, targets, maps, mode, steps=16, substrate=None,
                              batch_size=512, generator=None):
    """Target probability as pixels are deleted or inserted in order of the map (RISE sec. 4.1).

    Deletion starts from the image and replaces the most important pixels first with the
    ``substrate`` (default: zeros, the dataset's mean colour after normalization, as in the
    RISE code); a faithful map makes p(target) fall fast (low area). Insertion starts from the
    substrate (default: :func:`insertion_start`, a blurred copy) and puts the most important
    pixels back first; a faithful map makes p(target) rise fast (high area). After step s of
    ``steps`` the first round(s * H * W / steps) pixels of the order have been changed, over
    every colour channel. All N * (steps + 1) variants run in batches of ``batch_size``.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N,) class per image.
        maps: (N, H, W) importance; mode: ``deletion`` or ``insertion``.
        generator: orders tied pixels (see :func:`pixel_order`).

    Returns:
        (N, steps + 1) target probabilities, step 0 first.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    if substrate is None:
        substrate = torch.zeros_like(inputs) if mode == "deletion" else insertion_start(inputs)
    count, _, height, width = inputs.shape
    pixels = height * width
    rank = torch.empty(count, pixels, dtype=torch.int64, device=inputs.device)
    order = pixel_order(maps, generator).to(inputs.device)
    rank.scatter_(1, order, torch.arange(pixels, device=inputs.device).expand(count, -1))
    changed = torch.linspace(0, pixels, steps + 1, device=inputs.device).round().long()
    start, end = (inputs, substrate) if mode == "deletion" else (substrate, inputs)

    curves = torch.empty(count * (steps + 1), dtype=inputs.dtype, device=inputs.device)
    batch_size = variant_batch(batch_size, inputs)
    for first in range(0, len(curves), batch_size):
        flat = torch.arange(first, min(first + batch_size, len(curves)), device=inputs.device)
        image, step = flat // (steps + 1), flat % (steps + 1)
        done = (rank[image] < changed[step, None]).view(-1, 1, height, width)  # (B, 1, H, W)
        variants = torch.where(done, end[image], start[image])  # (B, C, H, W)
        probabilities = torch.softmax(model(fast_layout(variants)), dim=1)
        curves[flat] = probabilities.gather(1, targets[image, None])[:, 0]
    return curves.view(count, steps + 1)


def area_under_curve(curves):
    """Trapezoidal area under (N, S + 1) curves sampled evenly on [0, 1]: (N,)."""
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(1) / (2 * steps)


def average_ranks(values):
    """Rank of every entry within its row, 1-based, ties sharing their average rank.

    (N, M) -> (N, M) float, the ranks Spearman's coefficient uses.
    """
    values = values.float().contiguous()  # slices of a cascade are strided
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, side="left")  # entries smaller than each
    up_to = torch.searchsorted(ordered, values, side="right")  # entries not larger
    return (below + up_to + 1).float() / 2


def spearman(first, second):
    """Spearman rank correlation between paired maps, per pair: (N, ...) x (N, ...) -> (N,).

    The Pearson correlation of the average ranks. A constant map has no order to compare, so
    its correlation is 0.
    """
    a = average_ranks(first.flatten(1))
    b = average_ranks(second.flatten(1))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / ((a.square().sum(1) * b.square().sum(1)).sqrt() + EPSILON)


def randomization_stages(model):
    """The layers cascading randomization re-initializes, top first: [(name, modules)].

    Each conv or Linear layer is one stage; a BatchNorm joins the conv before it, since the two
    form one learned filter bank; a residual or inverted-residual block (torchvision's ResNet
    and MobileNet) is one stage with all its layers, as Adebayo et al. randomize Inception v3
    block by block.
    """
    stages = []

    def walk(module, prefix):
        for name, child in module.named_children():
            name = f"{prefix}{name}"
            if isinstance(child, (*RESIDUAL_BLOCKS, InvertedResidual)):
                stages.append((name, [m for m in child.modules()
                                      if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]))
            elif isinstance(child, (nn.Conv2d, nn.Linear)):
                stages.append((name, [child]))
            elif isinstance(child, nn.BatchNorm2d) and stages:
                stages[-1][1].append(child)
            else:
                walk(child, f"{name}.")

    walk(model, "")
    return stages[::-1]


def cascading_randomization(model, seed=0):
    """Yield (layer, model) with the weights re-initialized from the top layer down, cumulatively.

    Adebayo et al. 2018, sec. 3.1 (cascading randomization): stage 1 re-initializes the output
    layer, stage 2 also the layer below, and so on down to the first conv layer. Each layer
    gets its fresh PyTorch default initialization (``reset_parameters``; BatchNorm back to the
    identity) from ``seed``. ``model`` itself is never changed and the global random state is
    left as it was; every yielded model is a separate copy in eval mode on the model's device.
    """
    device = next(model.parameters()).device
    randomized = copy.deepcopy(model).cpu().eval()  # CPU: the same weights on any device
    for stage, (name, modules) in enumerate(randomization_stages(randomized)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + stage)
            for module in modules:
                module.reset_parameters()
        yield name, copy.deepcopy(randomized).to(device)


@dataclass
class Cost:
    """What one method call cost: passes through the net, seconds and memory."""

    forward_images: int = 0  # images sent through the first layer, in any batch
    backward_images: int = 0  # images whose gradient reached the output layer
    seconds: float = 0.0
    peak_bytes: int = 0  # peak memory above the level at the start

    def add(self, other):
        """Count ``other``'s passes and seconds too; the peak is the higher one."""
        self.forward_images += other.forward_images
        self.backward_images += other.backward_images
        self.seconds += other.seconds
        self.peak_bytes = max(self.peak_bytes, other.peak_bytes)
        return self

    def per_image(self, count):
        """A JSON-ready summary for ``count`` explained images."""
        return {"forward_passes_per_image": self.forward_images / count,
                "backward_passes_per_image": self.backward_images / count,
                "seconds": self.seconds, "ms_per_image": 1000 * self.seconds / count,
                "peak_memory_mib": self.peak_bytes / 2 ** 20}


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): byte counts of the C heap."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_reader():
    """A function giving the bytes the C allocator has handed out and not yet taken back.

    CPU tensors live in the C heap; glibc's ``mallinfo2`` counts its bytes in use (small
    blocks plus mmapped large ones), which, unlike resident memory, falls again when a tensor
    is freed. Elsewhere (macOS, musl, Windows) fall back to resident memory from /proc, or 0.
    """
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return _resident_bytes
    mallinfo2.restype = _MallInfo2

    def heap_bytes():
        info = mallinfo2()
        return info.uordblks + info.hblkhd
    return heap_bytes


def _resident_bytes():
    """This process's resident memory now (Linux /proc), or 0 where that is not available."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_heap_bytes = _heap_reader()


@contextmanager
def measure_cost(model, device):
    """Count passes and measure time and peak memory of the code inside the block.

    A forward pass is counted per image entering the model's first layer (a masked copy in
    Score-CAM or an occluded copy counts as one); a backward pass per image whose gradient
    flows into the output layer's result. Peak memory is the CUDA allocator's peak on a GPU;
    on the CPU it is the C heap's bytes in use (tensors live there), sampled every
    millisecond by a thread, so a peak shorter than that can be missed.

    Yields:
        a :class:`Cost`, filled in when the block ends.
    """
    cost = Cost()
    children = list(model.children())

    def count_forward(module, inputs):
        cost.forward_images += len(inputs[0])

    def count_backward(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda gradient: _add_backward(cost, gradient))

    hooks = [children[0].register_forward_pre_hook(count_forward),
             children[-1].register_forward_hook(count_backward)]
    sampler = _PeakSampler(device)
    started = time.perf_counter()
    try:
        with sampler:
            yield cost
    finally:
        cost.seconds = time.perf_counter() - started
        cost.peak_bytes = sampler.peak
        for hook in hooks:
            hook.remove()


def _add_backward(cost, gradient):
    cost.backward_images += len(gradient)


class _PeakSampler:
    """Peak memory above the starting level while the ``with`` block runs (see measure_cost)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.start = self.highest = _heap_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.001):
            self.highest = max(self.highest, _heap_bytes())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(0, torch.cuda.max_memory_allocated() - self.start)
            return False
        self.stop.set()
        self.thread.join()
        self.highest = max(self.highest, _heap_bytes())
        self.peak = max(0, self.highest - self.start)
        return False
