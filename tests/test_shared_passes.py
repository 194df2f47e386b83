"""Several targets per image (model.attribution.registry): every method takes targets (N, T)
and returns (N, T, H, W) maps equal to T calls with one target each; the perturbation and
CAM methods that share passes read all T from the passes one target needs (Integrated
Gradients its forward passes), and the explorer's survey, which now asks each method once for
all four targets, stores the same bytes as asking once per target. The gradient methods asked
for the same images and targets share one forward and backward pass
(model.attribution.shared_passes): the same maps as their own passes, from fewer passes.

float64 throughout: the shared passes put other copies in a batch than T separate calls do,
and CPU kernels round differently per batch shape; float64 keeps that near 1e-16.
"""
import dataclasses

import pytest
import torch
import torch.nn as nn

from model.attribution import BASELINE, METHODS
from model.attribution.cam import activations_and_gradients
from model.attribution.occlusion import compute_occlusion
from model.attribution.shared_passes import lookup, shared_passes
from model.data.datasets import DATASET_INFO
from model.evaluation import survey
from model.nets.architectures import build_model
from model.nets.layers import conv_layer_names

INFO = dataclasses.replace(DATASET_INFO["shapes"], image_size=16)
OPTIONS = dict(layer="conv4", info=INFO, batch_size=5, patch=4, stride=4, steps=4)
TARGETS = torch.tensor([[0, 2, 5], [4, 1, 3]])  # (N, T): three different targets per image
SHARING = {"occlusion", "cam", "scorecam", "faster-scorecam", "ablationcam", "eigencam",
           "integrated-gradients"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread for this module, restored after it: on a busy 2-core CPU two threads
    wait for each other at every one of the many small float64 ops (2x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vgg(seed=0):
    """The project's vgg at 16 px, float64, BatchNorm no identity (random statistics and
    affine parts, most units alive after the ReLU)."""
    torch.manual_seed(seed)
    model = build_model("vgg", 3, 6, 16).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.data.uniform_(-0.3, 0.3)
            module.running_var.data.uniform_(0.5, 2.0)
            module.bias.data.uniform_(0.0, 0.3)
    return model.double()


def test_the_registry_marks_the_methods_that_share_passes():
    assert {name for name, method in METHODS.items() if method.shares_passes} == SHARING
    # of the gradient methods only IG: its forward passes along the path serve every target
    assert {name for name, method in METHODS.items()
            if method.shares_passes and method.family == "gradient"} == {"integrated-gradients"}


CASES = [(name, {}) for name in METHODS if name != BASELINE] + [("occlusion",
                                                                  {"incremental": True})]


@pytest.mark.parametrize("name, extra", CASES, ids=[f"{name}{'-incremental' * bool(extra)}"
                                                    for name, extra in CASES])
def test_several_targets_equal_one_call_per_target(name, extra):
    """For every method (the random baseline draws anew per call): the (N, T) call's map for
    target t equals the (N,) call with the targets of column t."""
    model = vgg()
    inputs = torch.randn(2, 3, 16, 16).double()
    several = METHODS[name](model, inputs, TARGETS, **OPTIONS, **extra).detach()
    assert several.shape == (2, 3, 16, 16)
    for slot in range(TARGETS.shape[1]):
        one = METHODS[name](model, inputs, TARGETS[:, slot], **OPTIONS, **extra).detach()
        assert one.shape == (2, 16, 16)
        assert torch.allclose(several[:, slot], one, atol=1e-10, rtol=0), slot
    if name not in ("eigencam",):  # Eigen-CAM's map alone does not depend on the class
        assert not torch.allclose(several[:, 0], several[:, 1], atol=1e-6)


@pytest.mark.parametrize("incremental", [False, True])
def test_occlusion_result_per_target_equals_its_own_call(incremental):
    """compute_occlusion with targets (N, T): probabilities, drops and base probabilities per
    target as in one call each; the most probable class, which has no target, the same."""
    model = vgg(1)
    inputs, fill = torch.randn(2, 3, 16, 16).double(), torch.zeros(2, 3, 16, 16).double()
    several = compute_occlusion(model, inputs, TARGETS, fill, 5, 3, batch_size=7,
                                incremental=incremental)
    assert several.probability.shape == (2, 3, 5, 5) and several.base_probability.shape == (2, 3)
    for slot in range(TARGETS.shape[1]):
        one = compute_occlusion(model, inputs, TARGETS[:, slot], fill, 5, 3, batch_size=7,
                                incremental=incremental)
        for field in ("probability", "drop", "base_probability", "pixel_drop"):
            assert torch.allclose(getattr(several, field)[:, slot], getattr(one, field),
                                  atol=1e-12, rtol=0), field
        assert torch.equal(several.top_class, one.top_class)


class PassCounter:
    """Forward calls and images through the first conv and the Linear layer of a net: every
    pass, whole (occlusion, Score-CAM) or from a layer on (Ablation-CAM's head), ends in the
    Linear layer."""

    def __init__(self, model, names=("conv1", "fc")):
        self.counts = {name: [0, 0] for name in names}
        self.handles = [model.get_submodule(name).register_forward_hook(self.hook(name))
                        for name in names]

    def hook(self, name):
        def count(module, args, output):
            self.counts[name][0] += 1
            self.counts[name][1] += len(args[0])
        return count

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("name, extra", [(name, {}) for name in sorted(SHARING)]
                         + [("occlusion", {"incremental": True})])
def test_several_targets_cost_the_passes_of_one(name, extra):
    """The (N, T) call runs exactly the forward calls, of exactly as many images, as the call
    with one target per image."""
    model = vgg()
    inputs = torch.randn(2, 3, 16, 16).double()
    counted = {}
    for targets in (TARGETS[:, 0], TARGETS):
        counter = PassCounter(model)
        try:
            METHODS[name](model, inputs, targets, **OPTIONS, **extra)
        finally:
            counter.remove()
        counted[targets.dim()] = counter.counts
    assert counted[2] == counted[1], counted
    assert counted[1]["fc"][1] > 2 or name in ("cam", "eigencam")  # the perturbed copies ran


def test_the_explorer_stores_the_bytes_of_one_call_per_target(monkeypatch):
    """explorer_maps asks the methods that share passes once for all targets; its bytes equal
    those of the per-target repetition it replaced (the registry's fallback, forced here for
    every method)."""
    model = vgg(2)
    inputs = torch.randn(2, 3, 16, 16).double()
    targets = torch.tensor([[0, 3, 1, 5], [2, 4, 0, 1]])  # (N, T = survey.TARGETS)
    chosen = {name: method for name, method in METHODS.items()
              if name in SHARING or name == "gradcam"}
    monkeypatch.setattr(survey, "METHODS", chosen)
    shared = survey.explorer_maps(model, inputs, targets, conv_layer_names(model), INFO,
                                  batch_size=7)
    monkeypatch.setattr(survey, "METHODS", {name: dataclasses.replace(method, shares_passes=False)
                                            for name, method in chosen.items()})
    repeated = survey.explorer_maps(model, inputs, targets, conv_layer_names(model), INFO,
                                    batch_size=7)
    assert [(name, layer) for name, layer, _, _ in shared] \
        == [(name, layer) for name, layer, _, _ in repeated]
    # cam at conv4 alone, occlusion and IG at no layer, gradcam's counterfactual at each layer
    assert len(shared) == 3 * len(chosen) - 2 - 2 * 2 + 3
    for (name, layer, maps, _), (_, _, expected, _) in zip(shared, repeated):
        assert maps.shape == (2, 4, 16, 16)
        assert torch.equal(maps, expected), (name, layer)


GRADIENT_CASES = [(name, layer, counterfactual)
                  for name, method in METHODS.items() if "gradients" in method.needs
                  and not method.shares_passes
                  for layer in (["conv4", "conv2", "conv1"] if "layer" in method.needs else [None])
                  for counterfactual in ([False, True] if "counterfactual" in method.defaults
                                         else [False])]


def test_gradient_methods_inside_shared_passes_equal_their_own_passes():
    """Every gradient method (the CAM ones at three layers, with and without counterfactual)
    gives the same map from the shared pass as from its own, and the net runs one forward pass
    for all that use the plain gradient, plus one per (guided or DeconvNet rule, sign)."""
    model = vgg(3)
    inputs = torch.randn(3, 3, 16, 16).double()
    targets = torch.tensor([0, 4, 2])
    options = dict(info=INFO, batch_size=5)
    own = {case: METHODS[case[0]](model, inputs, targets, layer=case[1], counterfactual=case[2],
                                  **options).detach() for case in GRADIENT_CASES}
    counter = PassCounter(model)
    try:
        with shared_passes(model, inputs, targets, ["conv4", "conv2", "conv1"]):
            for case in GRADIENT_CASES:
                name, layer, counterfactual = case
                shared = METHODS[name](model, inputs, targets, layer=layer,
                                       counterfactual=counterfactual, **options).detach()
                assert torch.allclose(shared, own[case], atol=1e-12, rtol=0), case
    finally:
        counter.remove()
    # the plain pass; guided (class and counterfactual, for guided backprop and guided
    # Grad-CAM); DeconvNet
    assert counter.counts["fc"][0] == 4, counter.counts
    assert len(GRADIENT_CASES) == 4 + 5 * 3 * 2 + 3 * 2  # input gradients; CAMs; guided CAM


def test_shared_passes_serve_only_the_tensors_they_were_opened_with():
    """Equal values in another tensor (or other targets) run their own pass: a method that
    transforms its input (aug-smooth, SmoothGrad, IG's path) never reads another's pass."""
    model = vgg(4)
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([1, 3])
    with shared_passes(model, inputs, targets, ["conv4"]) as passes:
        assert lookup(model, inputs, targets, "conv4") is passes
        assert lookup(model, inputs.clone(), targets, "conv4") is None
        assert lookup(model, inputs, targets.clone(), "conv4") is None
        assert lookup(model, inputs, targets, "conv2") is None  # a layer it does not record
        assert lookup(vgg(4), inputs, targets) is None
    assert lookup(model, inputs, targets) is None  # closed


def test_counterfactual_gradients_are_the_plain_ones_negated():
    """The shared pass answers the counterfactual (the gradients of -y^c) by negating the plain
    gradients; held against a pass of -y^c of its own, the way activations_and_gradients
    computes it outside the block."""
    model = vgg(5)
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([2, 5])
    _, own, _ = activations_and_gradients(model, "conv2", inputs, targets, counterfactual=True)
    with shared_passes(model, inputs, targets, ["conv2"]):
        _, shared, _ = activations_and_gradients(model, "conv2", inputs, targets,
                                                 counterfactual=True)
    assert own.abs().max() > 0
    assert torch.allclose(shared, own, atol=1e-14, rtol=0)
