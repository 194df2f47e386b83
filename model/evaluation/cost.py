"""What an attribution method costs: forward and backward passes per image, time, and peak
memory (the C heap on the CPU, sampled while the method runs; the allocator's peak on CUDA)."""
import ctypes
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from model.attribution.cam import final_linear


@dataclass
class Cost:
    """What one method call cost: passes through the net, seconds and memory."""

    forward_images: int = 0  # images whose pass reached the output layer, in any batch
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


_heap_bytes = _heap_reader()


def _resident_bytes():
    """This process's resident memory now (Linux /proc), or 0 where that is not available."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextmanager
def measure_cost(model, device):
    """Count passes and measure time and peak memory of the code inside the block.

    A forward pass is counted per image reaching the output layer (the last ``nn.Linear``, or
    else the model's last child): a masked copy in Score-CAM or an occluded copy counts as one,
    and so do the passes that do not start at the first layer, Ablation-CAM's through the
    layers after its layer and incremental occlusion's, which recompute only a patch's box;
    a backward pass per image whose gradient flows into the output layer's result. Peak
    memory is the CUDA allocator's peak on a GPU; on the CPU it is the C heap's bytes in use
    (tensors live there), sampled every millisecond by a thread, so a peak shorter than that
    can be missed.

    Yields:
        a :class:`Cost`, filled in when the block ends.
    """
    cost = Cost()
    output_layer = final_linear(model) or list(model.children())[-1]

    def count(module, inputs, output):
        cost.forward_images += len(output)
        if output.requires_grad:
            output.register_hook(lambda gradient: _add_backward(cost, gradient))

    hooks = [output_layer.register_forward_hook(count)]
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
