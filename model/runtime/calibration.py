"""Whether bfloat16 autocast is fast on this CPU: measured once, then cached per CPU.

Whether a CPU computes bfloat16 convolutions faster than float32 depends on more than one
feature flag: with AMX tiles (Intel Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4 and 5,
Intel Cooper Lake) oneDNN has bfloat16 kernels, measured here 1.7x faster than float32 for
training the CIFAR-10 net and 3x for MobileNetV2's inference at 224 px (2-core "AMD EPYC",
Zen 5); with AVX2 or AVX-512 alone it converts to float32 and back, 3x to 10x slower. So it is
measured: a few forward and backward passes of a small stack of 3x3 convolutions, float32
against bfloat16 autocast, both channels-last (about 0.5 s; the verdict is kept in
``$XDG_CACHE_HOME/cnn-viz/bfloat16.json``, keyed by CPU, torch version and thread count).

``CNN_VIZ_BFLOAT16=on`` or ``off`` overrides the measurement (``auto``, the default, measures).
The test suite runs with ``off``: float32 is the reference of every equality test.
"""
import functools
import json
import os
import platform
import time
from pathlib import Path

import torch

from model.errors import UserError

SWITCH = "CNN_VIZ_BFLOAT16"
SWITCH_VALUES = ("auto", "on", "off")
MIN_SPEEDUP = 1.2  # bfloat16 rounds to 8 bits of mantissa: worth it only when clearly faster


def bfloat16_switch():
    """``CNN_VIZ_BFLOAT16``: ``auto`` (the default: measured), ``on`` or ``off``."""
    switch = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if switch not in SWITCH_VALUES:
        raise UserError(f"{SWITCH}={switch!r}: use one of {', '.join(SWITCH_VALUES)}")
    return switch


def cpu_bfloat16_is_fast():
    """Whether bfloat16 autocast is faster on this CPU: the cached verdict, else a new
    measurement (:func:`measure_speedup`)."""
    return _measured_verdict(cpu_key())


def cpu_key():
    """What the verdict depends on: the CPU model, its vector ISA as torch sees it, the torch
    version and the number of threads."""
    return (f"{cpu_model_name()} | {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__} | {torch.get_num_threads()} threads")


def cpu_model_name():
    """The CPU's model name as ``lscpu`` shows it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cache_file():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnn-viz" / \
        "bfloat16.json"


@functools.cache
def _measured_verdict(key):
    """The cached verdict for ``key``, or a new measurement written to the cache (a cache that
    cannot be read or written only costs the measurement again)."""
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)):
        return entry["speedup"] >= MIN_SPEEDUP
    speedup = measure_speedup()
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = {"speedup": round(speedup, 3), "measured": time.strftime("%Y-%m-%d")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(cached, indent=1))
        temporary.replace(path)  # atomic: a concurrent reader sees the old or the new file
    except OSError:
        pass
    return speedup >= MIN_SPEEDUP


def measure_speedup(repeats=3, seed=0):
    """float32 time / bfloat16 autocast time of one training step (forward and backward) of
    three 3x3 convolutions, 64 channels, on 16 images of 32 x 32, channels-last; the best of
    ``repeats`` each after one warm-up step. bfloat16 stops after its first timed step when
    that is already slower than float32 (an AVX2 CPU: 10x slower, no need to wait for it)."""
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(3):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
        layers += [conv, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).to(memory_format=torch.channels_last)
    images = torch.randn(16, 64, 32, 32, generator=generator).contiguous(
        memory_format=torch.channels_last)

    def step(bfloat16):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = net(images).float().square().mean()
        loss.backward()
        return time.perf_counter() - started

    step(False)
    float32 = min(step(False) for _ in range(repeats))
    step(True)
    bfloat16 = step(True)
    if bfloat16 < float32:
        bfloat16 = min([bfloat16] + [step(True) for _ in range(repeats - 1)])
    return float32 / bfloat16
