"""model/attribution/incremental.py: incremental occlusion (Krypton, SIGMOD 2019) against plain
occlusion.

The claim under test: for every supported architecture the incremental maps equal the plain
occlusion maps, to 1e-10 relative in float64 and 1e-4 relative in float32, where "relative"
is to the map's largest magnitude. The nets have random weights, with BatchNorm's running
statistics and affine parameters randomized so that it is no identity. The patch grid has
patches at both borders, the last one moved flush to the far edge by a stride that does not
divide the image. Beside it: every baseline through the registry, batches of one position,
Krypton's approximate mode, the changed interval of a conv or pool against brute force, the
fallback for a layer it cannot crop, and mutations the comparisons must catch.
"""
import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from conftest import stderr_lines
from model.attribution import METHODS, incremental
from model.attribution.incremental import (
    DEFAULT_MAX_MEMORY_MB,
    IncrementalOcclusion,
    changed_interval,
    positions_per_batch,
    window_of,
)
from model.attribution.occlusion import compute_occlusion, patch_positions
from model.data.datasets import DATASET_INFO
from model.nets.architectures import build_model

SIZE = 64
# Patch 9 at stride 27: tops 0, 27, 54 and 55, the last moved flush to the border (27 does not
# divide 55); odd and even tops meet the stride-2 layers at both phases.
PATCH, STRIDE = 9, 27
# vgg's "deep" plan is left out: it has fast's kinds of layers (whitening, conv-pool-BN-ReLU,
# conv), only wider and two more, and in float64 it cost the suite 23 s.
ARCHITECTURES = [("simple", None), ("vgg", "small"), ("vgg", "fast"),
                 ("resnet18", None), ("alexnet", None), ("vgg16", None), ("mobilenet_v2", None)]
# The heaviest net in float64 gets tops 0, 30, 55 (stride 30 does not divide 55 either).
STRIDES = {("vgg16", None): 30}
TARGETS = torch.tensor([1, 3])  # a different target per image


def relative_error(actual, expected):
    """max |actual - expected| over the largest |expected|: the issue's "relative", to the
    map's largest magnitude (per entry, the near-zero drops would blow any tolerance up)."""
    return float((actual - expected).abs().max() / expected.abs().max())


@torch.no_grad()
def random_net(arch, plan):
    """A float32 net with random weights, in eval mode, whose occlusion maps are not tiny.

    BatchNorm's running statistics are first measured on random images (without it
    MobileNetV2's ReLU6 saturates and its maps are 1e-10), then shifted and scaled at random,
    with a random affine part. The last Linear layer is scaled to logits of standard deviation
    about 3, so the softmax is not flat and the largest drops are 0.03 to 0.8: a relative
    tolerance on them measures the incremental computation, not the rounding of
    probabilities near 1/K.
    """
    torch.manual_seed(0)
    net = build_model(arch, 3, 5, SIZE, plan or "small")
    if arch == "vgg16":  # its classifier narrowed from 4096 to 64 units: occlusion's
        # increments end at the conv stack, and the 100 M parameters of the 4096-wide layers
        # (0.8 GB in float64, read by every batch of positions) cost the suite 10 s
        net.classifier[0] = nn.Linear(net.classifier[0].in_features, 64)
        net.classifier[3] = nn.Linear(64, 64)
        net.classifier[6] = nn.Linear(64, net.classifier[6].out_features)
    norms = [module for module in net.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # running statistics = the plain mean over the batches seen
        norm.reset_running_stats()
    net.train()(torch.randn(4, 3, SIZE, SIZE))
    net.eval()
    for norm in norms:
        count = norm.num_features
        norm.running_mean.add_(0.2 * torch.randn(count))
        norm.running_var.mul_(torch.rand(count) + 0.5)
        norm.weight.copy_(torch.rand(count) + 0.5)
        norm.bias.copy_(0.2 * torch.randn(count))
    last = [module for module in net.modules() if isinstance(module, nn.Linear)][-1]
    last.weight.mul_(3 / net(torch.randn(4, 3, SIZE, SIZE)).std(1).mean())
    return net


@pytest.fixture(scope="module")
def nets():
    """``nets(arch, plan, dtype)``: :func:`random_net`, built once per module (VGG16's 100 M
    parameter classifier takes seconds to initialize); float64 copies are not kept."""
    built = {}

    def get(arch, plan, dtype=torch.float32):
        if (arch, plan) not in built:
            built[arch, plan] = random_net(arch, plan)
        net = built[arch, plan]
        return net if dtype == torch.float32 else copy.deepcopy(net).to(dtype)

    yield get
    built.clear()


def images(dtype, count=2):
    """(count, 3, SIZE, SIZE) inputs and a fill of four times their spread: a strong occluder,
    so that float32 maps stand well above float32 rounding."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(count, 3, SIZE, SIZE, generator=generator, dtype=dtype)
    fill = 4 * torch.randn(count, 3, SIZE, SIZE, generator=generator, dtype=dtype)
    return inputs, fill


def occluded(image, fill, patch, tops, lefts):
    """(P, C, H, W): ``image`` with the patch from ``fill`` at every grid position, row-major;
    built by slicing, independently of compute_occlusion's masks."""
    variants = []
    for top in tops.tolist():
        for left in lefts.tolist():
            variant = image.clone()
            variant[:, top:top + patch, left:left + patch] = \
                fill[:, top:top + patch, left:left + patch]
            variants.append(variant)
    return torch.stack(variants)


# ---- incremental = plain, every architecture -----------------------------------------------

@pytest.mark.parametrize("arch, plan", ARCHITECTURES,
                         ids=[arch + (f"-{plan}" if plan else "") for arch, plan in ARCHITECTURES])
def test_incremental_maps_equal_plain_maps_in_float64(nets, arch, plan):
    """Every supported architecture, float64: probability, drop and pixel_drop to 1e-10
    relative, top_class exactly, and the logits themselves (their change from the unoccluded
    image, to 1e-10 of its largest value) against the net run on each occluded image.

    1e-10: the two computations differ only in summation order (the boxes, the batch shapes),
    which float64 rounds at about 1e-14 of these maps (measured up to 4e-14); an interval one
    row short is off by 0.7 (the mutation tests below). No layer of these nets may fall back
    to whole maps.
    """
    net = nets(arch, plan, torch.float64)
    stride = STRIDES.get((arch, plan), STRIDE)
    inputs, fill = images(torch.float64)
    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, stride,
                              incremental=False)
    fast = compute_occlusion(net, inputs, TARGETS, fill, PATCH, stride, incremental=True)
    assert plain.tops[-1] == SIZE - PATCH and (SIZE - PATCH) % stride != 0  # moved flush
    assert plain.drop.abs().max() > 1e-3  # maps well above the rounding of probabilities
    assert relative_error(fast.probability, plain.probability) <= 1e-10
    assert relative_error(fast.drop, plain.drop) <= 1e-10
    assert relative_error(fast.pixel_drop, plain.pixel_drop) <= 1e-10
    assert torch.equal(fast.top_class, plain.top_class)

    tops, lefts = plain.tops, plain.lefts
    occlusion = IncrementalOcclusion(net, inputs[:1], PATCH, tops, lefts)
    assert occlusion.describe_fallbacks() == ""
    occlusion.keep(inputs[1])
    logits = occlusion.logits(fill[1], torch.arange(len(tops) * len(lefts)))  # (P, K)
    with torch.no_grad():
        expected = net(occluded(inputs[1], fill[1], PATCH, tops, lefts))  # (P, K)
        base = net(inputs[1:2])  # (1, K)
    assert relative_error(logits - base, expected - base) <= 1e-10


FLOAT32_ARCHITECTURES = [("vgg", "fast"), ("resnet18", None), ("vgg16", None)]


@pytest.mark.parametrize("arch, plan", FLOAT32_ARCHITECTURES,
                         ids=["vgg-fast", "resnet18", "vgg16"])
def test_incremental_maps_equal_plain_maps_in_float32(nets, arch, plan):
    """float32 (what the scripts run): probability and pixel_drop to 1e-4 relative.

    Measured here: the incremental pixel_drop at most 2.6e-5 from the plain one (vgg16, the
    deepest; 1.6e-5 with two threads), about what the plain maps alone move between batch
    sizes 1 and 256 (2.1e-5: CPU kernels round by batch shape). top_class is not compared:
    float32 may swap two classes whose probabilities lie within its rounding.
    """
    net = nets(arch, plan)
    inputs, fill = images(torch.float32)
    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=False)
    fast = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    assert fast.probability.dtype == torch.float32
    assert plain.drop.abs().max() > 1e-2
    assert relative_error(fast.probability, plain.probability) <= 1e-4
    assert relative_error(fast.pixel_drop, plain.pixel_drop) <= 1e-4


# ---- baselines, batches, approximate mode ---------------------------------------------------

@pytest.mark.parametrize("baseline", ["gray", "zero", "mean", "blur", "0.3"])
def test_every_baseline_through_the_registry(nets, baseline):
    """The registered method with incremental=True gives the maps of incremental=False, for
    every fill (a constant, the normalized mean, the image's own blur), float64, 1e-10
    relative (summation order only, as above)."""
    net = nets("vgg", "small", torch.float64)
    info = dataclasses.replace(DATASET_INFO["shapes"], image_size=SIZE)
    pixels = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    inputs = info.normalize(pixels)
    options = dict(info=info, patch=PATCH, stride=STRIDE, baseline=baseline)
    plain = METHODS["occlusion"](net, inputs, TARGETS, incremental=False, **options)
    fast = METHODS["occlusion"](net, inputs, TARGETS, incremental=True, **options)
    assert plain.shape == (2, SIZE, SIZE) and fast.dtype == torch.float64
    assert plain.abs().max() > 0
    assert relative_error(fast, plain) <= 1e-10


def test_a_tiny_memory_budget_gives_the_same_maps(nets):
    """Batches of 1 and of 3 positions (3 does not divide the 16) give the maps of one batch
    of all 16, float64, 1e-10 relative: each position's logits do not depend on which others
    share its batch. ResNet-18: its additions read two boxes per batch."""
    net = nets("resnet18", None, torch.float64)
    inputs, fill = images(torch.float64)
    tops = patch_positions(SIZE, PATCH, STRIDE)
    occlusion = IncrementalOcclusion(net, inputs[:1], PATCH, tops, tops)
    per_position_mb = occlusion.bytes_per_position(inputs.element_size()) / 2 ** 20
    assert positions_per_batch(occlusion, 8, DEFAULT_MAX_MEMORY_MB) >= len(tops) ** 2
    assert positions_per_batch(occlusion, 8, 1e-9) == 1
    assert positions_per_batch(occlusion, 8, 3.5 * per_position_mb) == 3

    whole = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    for budget in (1e-9, 3.5 * per_position_mb):
        result = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE,
                                   incremental=True, max_memory_mb=budget)
        assert relative_error(result.probability, whole.probability) <= 1e-10
        assert relative_error(result.pixel_drop, whole.pixel_drop) <= 1e-10
        assert torch.equal(result.top_class, whole.top_class)


def test_approximate_mode(nets):
    """Krypton's projective-field threshold (sec. 4.1), float64 on the small VGG, whose boxes
    grow past a quarter of the 16 px map after the second pool.

    tau = 1.0 cuts nothing: the exact maps, 1e-10 relative. tau = 0.25 gives finite maps of
    the same shape, with fewer FLOPs than the exact plan, that differ from the exact maps
    (by more than 1e-2 of their largest drop, measured 0.2: the cut has an effect).
    """
    net = nets("vgg", "small", torch.float64)
    inputs, fill = images(torch.float64)
    exact = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    uncut = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, approximate=1.0)
    assert relative_error(uncut.pixel_drop, exact.pixel_drop) <= 1e-10
    assert relative_error(uncut.probability, exact.probability) <= 1e-10

    cut = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, approximate=0.25)
    assert cut.pixel_drop.shape == exact.pixel_drop.shape == (2, SIZE, SIZE)
    assert cut.probability.shape == exact.probability.shape
    assert torch.isfinite(cut.pixel_drop).all() and torch.isfinite(cut.probability).all()
    assert relative_error(cut.pixel_drop, exact.pixel_drop) > 1e-2

    tops = exact.tops
    _, exact_flops, _ = IncrementalOcclusion(net, inputs[:1], PATCH, tops, tops).flops()
    plain_flops, cut_flops, _ = IncrementalOcclusion(net, inputs[:1], PATCH, tops, tops,
                                                     tau=0.25).flops()
    assert cut_flops < exact_flops < plain_flops


@pytest.mark.parametrize("tau", [0.75, 0.5, 0.3])
@torch.no_grad()
def test_approximate_logits_follow_the_definition_on_whole_maps(nets, tau):
    """The approximation by its definition, computed a second, independent way: every layer of
    the small VGG (an nn.Sequential) on whole maps, and after each conv or pool the entries
    outside the thresholded changed interval reset to the unoccluded activations. The boxed
    computation must give the same logits (float64, 1e-10 relative)."""
    net = nets("vgg", "small", torch.float64)
    inputs, fill = images(torch.float64, count=1)
    tops = patch_positions(SIZE, PATCH, STRIDE)
    plan = IncrementalOcclusion(net, inputs, PATCH, tops, tops, tau)
    plan.keep(inputs[0])
    boxed = plan.logits(fill[0], torch.arange(plan.positions))
    grid = [(int(top), int(left)) for top in tops for left in tops]
    expected = []
    for top, left in grid:
        occluded_input = occluded(inputs[0], fill[0], PATCH, tops.new_tensor([top]),
                                  tops.new_tensor([left]))
        occluded_map, unoccluded_map = occluded_input, inputs
        rows, columns = torch.tensor([[top, top + PATCH]]), torch.tensor([[left, left + PATCH]])
        for layer in net:
            occluded_map, unoccluded_map = layer(occluded_map), layer(unoccluded_map)
            window = incremental.window_of(layer)
            if window is None:
                continue
            kernel, stride, padding, dilation, _ = window
            height, width = occluded_map.shape[-2:]
            rows = incremental.threshold(torch.stack(changed_interval(
                *rows.unbind(1), kernel[0], stride[0], padding[0], dilation[0], height), 1),
                height, tau)
            columns = incremental.threshold(torch.stack(changed_interval(
                *columns.unbind(1), kernel[1], stride[1], padding[1], dilation[1], width), 1),
                width, tau)
            inside = torch.zeros(height, width, dtype=torch.bool)
            inside[rows[0, 0]:rows[0, 1], columns[0, 0]:columns[0, 1]] = True
            occluded_map = torch.where(inside, occluded_map, unoccluded_map)
        expected.append(occluded_map)
    expected = torch.cat(expected)
    assert relative_error(boxed - net(inputs), expected - net(inputs)) <= 1e-10


# ---- the geometry of one layer --------------------------------------------------------------

def random_window_layer(generator):
    """A conv, max pool or avg pool with random kernel, stride, padding and dilation along the
    rows (a 1 column window), and an input height it accepts."""
    def pick(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=generator))
    kind, kernel, stride = pick(0, 2), pick(1, 5), pick(1, 3)
    dilation = 1 if kind == 2 else pick(1, 3)  # avg pool has no dilation
    padding = pick(0, 3) if kind == 0 else pick(0, kernel // 2)  # pools: at most half
    height = pick(max(4, dilation * (kernel - 1) + 1 - 2 * padding), 20)
    if kind == 0:
        layer = nn.Conv2d(2, 3, (kernel, 1), (stride, 1), (padding, 0), (dilation, 1))
    elif kind == 1:
        layer = nn.MaxPool2d((kernel, 1), (stride, 1), (padding, 0), (dilation, 1))
    else:
        layer = nn.AvgPool2d((kernel, 1), (stride, 1), (padding, 0))
    return layer.double(), height


@torch.no_grad()
def test_changed_interval_against_brute_force():
    """Krypton Eq. 3-4 for 300 random convs and pools: raise input rows [a, b) by 100 to 200
    (so that every max-pool window holding one of them changes) and find the output rows that
    change. They lie inside changed_interval's [first, end). Where the window has no holes
    (dilation 1) or the change is at least a dilation wide, the interval is tight: every row
    in it changes, or, where no window meets the change (it falls between two strided
    windows), nothing changes and the interval holds the one row every box keeps."""
    generator = torch.Generator().manual_seed(3)
    tight_checked = 0
    for _ in range(300):
        layer, height = random_window_layer(generator)
        kernel, stride, padding, dilation, _ = window_of(layer)
        start = int(torch.randint(0, height, (1,), generator=generator))
        end = int(torch.randint(start + 1, height + 1, (1,), generator=generator))
        inputs = torch.randn(1, 2, height, 3, generator=generator, dtype=torch.float64)
        raised = inputs.clone()
        raised[:, :, start:end] += 100 * (1 + torch.rand(1, 2, end - start, 3,
                                                         generator=generator,
                                                         dtype=torch.float64))
        before, after = layer(inputs), layer(raised)
        changed = ((after - before).abs() > 1e-9)[0].any(2).any(0)  # (out rows,)
        rows = changed.nonzero()[:, 0].tolist()
        first, last = changed_interval(torch.tensor([start]), torch.tensor([end]), kernel[0],
                                       stride[0], padding[0], dilation[0], len(changed))
        first, last = int(first), int(last)
        setting = (layer, height, start, end, rows, first, last)
        assert 0 <= first < last <= len(changed), setting
        assert all(first <= row < last for row in rows), setting
        if dilation[0] == 1 or end - start >= dilation[0]:  # no change slips between taps
            assert rows == list(range(first, last)) or not rows and last - first == 1, \
                setting
            tight_checked += 1
    assert tight_checked > 150


# ---- a layer it cannot crop -----------------------------------------------------------------

class Shift(nn.Module):
    """Rolls the map one column (no window function of the incremental code's kinds)."""

    def forward(self, x):
        return torch.roll(x, 1, dims=3)


def net_with_a_roll():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), Shift(), nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval().double()


def test_unknown_layer_falls_back_to_whole_maps_and_says_so_once(capsys):
    """A torch.roll in the middle: from it on the layers run on whole maps, so the maps still
    equal the plain ones (float64, 1e-10 relative); describe_fallbacks names the layer in one
    line, which compute_occlusion prints on stderr once for the two images."""
    net = net_with_a_roll()
    inputs, fill = images(torch.float64)
    tops = patch_positions(SIZE, PATCH, STRIDE)
    line = IncrementalOcclusion(net, inputs[:1], PATCH, tops, tops).describe_fallbacks()
    assert "roll" in line and "\n" not in line

    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=False)
    capsys.readouterr()
    fast = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    assert stderr_lines(capsys.readouterr()) == [f"note: {line}"]
    assert relative_error(fast.probability, plain.probability) <= 1e-10
    assert relative_error(fast.pixel_drop, plain.pixel_drop) <= 1e-10


class StandardizedConv(nn.Conv2d):
    """A conv whose forward is its own (weight standardization, as in BiT): not torch.nn's
    window function of its weight, so it must not be cropped as one."""

    def forward(self, x):
        weight = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)


class LayerScale(nn.Module):
    """x * gamma with gamma (1, C, 1, 1): a pointwise product with a broadcast parameter."""

    def __init__(self, channels):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x):
        return x * self.gamma


@pytest.mark.parametrize("first", ["standardized conv", "layer scale"])
def test_own_forward_and_broadcast_parameters_keep_the_maps(first):
    """A Conv2d subclass with its own forward runs whole from there (its window is not
    torch.nn's), and a (1, C, 1, 1) parameter broadcasts over a box instead of being cropped
    like a map: the maps equal the plain ones (float64, 1e-10 relative)."""
    torch.manual_seed(0)
    stem = (StandardizedConv(3, 6, 3, padding=1) if first == "standardized conv"
            else nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), LayerScale(6)))
    net = nn.Sequential(stem, nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval().double()
    inputs, fill = images(torch.float64)
    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=False)
    fast = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    assert relative_error(fast.pixel_drop, plain.pixel_drop) <= 1e-10


# ---- mutations the comparisons must catch ---------------------------------------------------

@pytest.mark.parametrize("side", ["start", "end"])
def test_an_interval_one_row_short_is_caught(nets, monkeypatch, side):
    """Teeth: with changed_interval one row short at its start or at its end (where it has
    more than one row), the incremental maps of the small VGG differ from the plain ones by
    more than 1e-3 (measured 0.7 and 0.8), far beyond the 1e-10 the float64 test allows."""
    def one_row_short(*args):
        first, end = changed_interval(*args)
        longer = (end - first > 1).long()
        return (first + longer, end) if side == "start" else (first, end - longer)

    net = nets("vgg", "small", torch.float64)
    inputs, fill = images(torch.float64)
    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=False)
    monkeypatch.setattr(incremental, "changed_interval", one_row_short)
    mutant = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    assert relative_error(mutant.pixel_drop, plain.pixel_drop) > 1e-3


def test_occlusion_goes_incremental_by_itself_above_64_px_with_the_same_maps(monkeypatch):
    """Without ``incremental`` (None) the plan is built above INCREMENTAL_ABOVE_SIDE px only,
    where it was measured faster, and the maps are the plain ones (float64)."""
    import model.attribution.occlusion as occlusion

    built, real_plan = [], occlusion.incremental_plan

    def recording_plan(model, example, *args):
        built.append(example.shape[-1])
        return real_plan(model, example, *args)

    monkeypatch.setattr(occlusion, "incremental_plan", recording_plan)
    for side in (occlusion.INCREMENTAL_ABOVE_SIDE, occlusion.INCREMENTAL_ABOVE_SIDE + 8):
        torch.manual_seed(0)
        net = build_model("vgg", 3, 5, side).double().eval()
        inputs = torch.randn(2, 3, side, side, dtype=torch.float64)
        fill = torch.zeros_like(inputs)
        chosen = compute_occlusion(net, inputs, TARGETS, fill, 16, 8)
        plain = compute_occlusion(net, inputs, TARGETS, fill, 16, 8, incremental=False)
        assert torch.allclose(chosen.pixel_drop, plain.pixel_drop, atol=1e-12, rtol=0)
    assert built == [occlusion.INCREMENTAL_ABOVE_SIDE + 8]


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 mean(x))): a global pooling inside the net (Hu et al. 2018)."""

    def __init__(self, channels):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, 2, 1), nn.Conv2d(2, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), True)))))


def test_a_squeeze_excitation_net_runs_plain_and_says_so_once(capsys):
    """A patch changes every position after a global pooling: no box to crop, so compute_occlusion
    runs every occluded image whole (the same maps, float64) and says why in one line."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), SqueezeExcite(6),
                        nn.Conv2d(6, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).eval().double()
    inputs, fill = images(torch.float64)
    plain = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=False)
    capsys.readouterr()
    fast = compute_occlusion(net, inputs, TARGETS, fill, PATCH, STRIDE, incremental=True)
    (line,) = stderr_lines(capsys.readouterr())
    assert "pools globally before the head" in line and "running every occluded image whole" \
        in line
    assert relative_error(fast.probability, plain.probability) <= 1e-10
