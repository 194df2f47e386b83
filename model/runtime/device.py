"""Where code runs and how fast: the device (``--device``), seeding, bfloat16 autocast where the
device computes it fast, the channels-last layout, and freed memory kept for reuse."""
import ctypes
import random

import numpy as np
import torch

from model.errors import UserError
from model.runtime.calibration import bfloat16_switch, cpu_bfloat16_is_fast
from model.runtime.distributed import launched_by_torchrun, local_cuda_index


def fast_bfloat16(device):
    """Whether ``device`` computes bfloat16 convolutions faster than float32: a CUDA GPU that
    supports bfloat16, a CPU where it was measured faster (``model.runtime.calibration``: yes
    with AMX or AVX512-BF16, no with AVX2). ``CNN_VIZ_BFLOAT16=on`` or ``off`` decides instead
    of the measurement."""
    device = torch.device(device)
    switch = bfloat16_switch()
    if switch == "off":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return switch == "on" or cpu_bfloat16_is_fast()


def autocast(device, bfloat16):
    """bfloat16 autocast (BatchNorm and the loss stay float32) when asked for and fast on
    ``device``; otherwise a context that changes nothing."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=bfloat16 and fast_bfloat16(device))


def resolve_device(spec="auto"):
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``; auto picks CUDA when present.
    Under torchrun, CUDA means this process's GPU, ``cuda:LOCAL_RANK``.

    Raises:
        UserError: CUDA asked for but absent, a GPU index that does not exist, a GPU index
            under torchrun (which gives each process its own), or a bad spec.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} asked for CUDA, but no CUDA device is available; "
                            "use --device cpu or --device auto")
        if launched_by_torchrun():
            if device.index is not None:
                raise UserError(f"--device {spec}: under torchrun each process uses the GPU "
                                "of its LOCAL_RANK; give --device cuda")
            return torch.device("cuda", local_cuda_index())
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


# glibc's mallopt parameters (malloc.h); a C int holds the threshold.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2 ** 31 - 1


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse rather than hand it back to the OS.

    By default glibc serves each block above 32 MiB with its own mmap and unmaps it when freed,
    so the 100 MiB activations of every CIFAR-10 training step (batch 1024) are page-faulted
    and zeroed anew by the kernel: a sixth of the CPU time went to the kernel. With mmap and
    trimming off (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 2^31 - 1) freed blocks stay in
    the heap: training ran 10% faster ("Intel(R) Xeon(R) Processor", 2 cores), at the price
    of the process keeping its peak memory. Does nothing where the C library has no mallopt
    (macOS, Windows).

    Returns:
        whether both settings were applied.
    """
    try:  # the symbols already loaded, the C library's among them (none on Windows)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def seed_everything(seed):
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so that a run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def fast_model(model):
    """``model`` with its conv weights stored channels-last (same values, other memory order),
    in place; returned for chaining.

    oneDNN's CPU convolutions then run without converting layouts on every call: measured on
    a 2-core "AMD EPYC" (Zen 5), torch 2.14.1, float32, torchvision's MobileNetV2 at 224 px
    forwards an image in 9-11 ms against 18-40 ms with the default layout (forward + backward
    24-30 ms against 38-175 ms), ResNet-18 1.2x faster, the project's vgg at 32 px 2.5x
    (1.5x with the backward pass). The maps are the same up to float32 rounding (another
    order of the same sums).
    """
    return model.to(memory_format=torch.channels_last)


def fast_layout(images):
    """``images`` stored channels-last (same values, other memory order).

    For the large batches of perturbed copies that occlusion, Score-CAM and deletion /
    insertion send through the net, the CPU convolution and max-pool kernels run about 1.5x
    faster on this layout than on the default one.
    """
    return images.contiguous(memory_format=torch.channels_last)
