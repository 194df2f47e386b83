"""Ablation-CAM re-runs only the layers after its layer (model.nets.graph_split,
cam.ablated_logits): the same maps as re-running the whole net with the layer's output
replaced, on the project's vgg and on torchvision's ResNet-18 and MobileNetV2 at 64 px, inside
residual blocks too (where the skip connection's value is carried past the layer), and the
one-line fallback for a net torch.fx cannot cut.

Everything in float64 with random weights: the head alone and the whole net then agree to
1e-10. At their default layers a whole-net Ablation-CAM map of ResNet-18 and MobileNetV2 costs
2 x 512 (1280) float64 passes, a minute on a 2-core CPU; there the comparison is of what the two
paths differ in, the logits of a batch of ablated copies of both images, and the whole maps are
compared at layers of 16 and 64 channels.
"""
import functools

import pytest
import torch
import torch.nn as nn

from conftest import random_batch_norm_net, stderr_lines
from model.attribution import METHODS, cam as cams
from model.nets.graph_split import NotSplittable, split_after
from model.nets.layers import block_end

TARGETS = torch.tensor([[1, 4], [3, 0]])  # (N, T): different targets per image


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread for this module, restored after it: float64 MobileNetV2 runs many small
    depthwise convs, and on a busy 2-core CPU two threads wait for each other at each (this
    file took 80 s instead of 10 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache  # built once per net: no test changes it (hooks are gone after each)
def random_net(arch, size, seed=0):
    return random_batch_norm_net(arch, size, seed)


def no_hooks_left(model):
    return not any(module._forward_hooks or module._forward_pre_hooks
                   for module in model.modules())


def weights_both_ways(model, layer, inputs, targets, batch_size):
    """Ablation-CAM's weights from the head alone and from the whole net: (N, T, K) each, and
    the activations A (N, K, h, w) they weigh."""
    activations, _, logits = cams.activations_and_gradients(model, layer, inputs, None,
                                                            need_gradients=False)
    head, whole = [cams.ablation_weights(model, layer, inputs, activations, logits, targets,
                                         batch_size, whole_net=whole_net)
                   for whole_net in (False, True)]
    return head, whole, activations



def cam_map(weights, activations):
    """ReLU(sum_k w_k A_k), as Ablation-CAM combines its weights."""
    return cams.combine_terms(cams.weighted_terms(weights, activations))

@pytest.mark.parametrize("layer", ["conv4", "conv2", "pool1"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_vgg_maps_from_the_head_equal_the_whole_net_rerun(layer, batch_size):
    model = random_net("vgg", 16)
    inputs = torch.randn(2, 3, 16, 16).double()
    head, whole, activations = weights_both_ways(model, layer, inputs, TARGETS, batch_size)
    assert head.shape == (2, 2, activations.shape[1])
    assert float(whole.abs().max()) > 0.01  # the ablations change the scores
    assert torch.allclose(head, whole, atol=1e-10, rtol=0)
    assert torch.allclose(cam_map(head, activations), cam_map(whole, activations),
                          atol=1e-10, rtol=0)
    assert no_hooks_left(model)


def test_the_registry_map_runs_no_layer_before_the_ablated_one():
    """Doing less work: while Ablation-CAM ablates conv4's channels, conv1 runs once (the
    unablated pass), not once per batch of ablated copies."""
    model = random_net("vgg", 16)
    inputs = torch.randn(2, 3, 16, 16).double()
    calls = {"conv1": 0, "fc": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return hook
    handles = [model.get_submodule(name).register_forward_hook(count(name)) for name in calls]
    try:
        maps = METHODS["ablationcam"](model, inputs, TARGETS[:, 0], layer="conv4", batch_size=8)
    finally:
        for handle in handles:
            handle.remove()
    assert maps.shape == (2, 16, 16)
    assert calls == {"conv1": 1, "fc": 1 + 2 * 64 // 8}


@pytest.mark.parametrize("arch, layer, batch_sizes", [("mobilenet_v2", "features.1", (1, 3)),
                                                      ("resnet18", "layer1.0.conv1", (3,))])
def test_torchvision_maps_from_the_head_equal_the_whole_net_rerun(arch, layer, batch_sizes):
    """End to end at 64 px where the whole-net re-run is affordable (16 and 64 channels; inside
    ResNet-18's first block, whose input is carried past the layer): the whole net once, the
    head at each batch size (ResNet-18's head at batch size 1, 128 calls, would add 6 s; the
    logits test below runs it at 1)."""
    model = random_net(arch, 64)
    inputs = torch.randn(2, 3, 64, 64).double()
    activations, _, logits = cams.activations_and_gradients(model, layer, inputs, None,
                                                            need_gradients=False)
    whole = cams.ablation_weights(model, layer, inputs, activations, logits, TARGETS, 64,
                                  whole_net=True)
    assert float(whole.abs().max()) > 1e-3
    for batch_size in batch_sizes:
        head = cams.ablation_weights(model, layer, inputs, activations, logits, TARGETS,
                                     batch_size)
        assert torch.allclose(cam_map(head, activations), cam_map(whole, activations),
                              atol=1e-10, rtol=0)
    assert no_hooks_left(model)


# Layers that end the conv part (every method's default), end a block, or sit inside a residual
# block (the block's identity, or its downsampled input, is carried past the layer); the number
# of carried values; whether the head is cheap enough for all of Ablation-CAM's weights (2 x K
# copies through it).
SPLITS = [("resnet18", "layer4", 0, True), ("resnet18", "layer2.1", 0, False),
          ("resnet18", "layer4.0.conv1", 1, False), ("mobilenet_v2", "features.18", 0, True),
          ("mobilenet_v2", "features.3.conv.0", 1, False)]


@pytest.mark.parametrize("arch, layer, carried, all_weights", SPLITS)
def test_torchvision_heads_give_the_whole_nets_logits_for_ablated_copies(arch, layer, carried,
                                                                         all_weights):
    """ResNet-18 and MobileNetV2 at 64 px (ImageNet's stem): six ablated copies, each of one of
    the two images with one channel zeroed, through the head at batch sizes 1 and 3 and through
    the whole net with the layer's output replaced; at the default layer, also the weights of
    ablation_weights for those channels against the whole net's scores."""
    model = random_net(arch, 64)
    inputs = torch.randn(2, 3, 64, 64).double()
    assert len(split_after(model, block_end(model, layer)).carried) == carried
    with torch.no_grad():
        activations, _, logits = cams.activations_and_gradients(model, layer, inputs, None,
                                                                need_gradients=False)
        image_index = torch.tensor([0, 1, 1, 0, 1, 0])
        # Each copy zeroes one of its image's strongest channels, so that every one shows.
        strongest = activations.sum((2, 3)).argsort(1, descending=True)  # (N, K)
        channels = strongest[image_index, torch.arange(6)]
        ablated = activations[image_index].clone()
        ablated[torch.arange(6), channels] = 0.0
        whole = cams.ablated_logits(model, layer, inputs, whole_net=True)(ablated, image_index)
        head = cams.ablated_logits(model, layer, inputs)
        for batch_size in (1, 3):
            parts = [head(ablated[start:start + batch_size], image_index[start:start + batch_size])
                     for start in range(0, 6, batch_size)]
            assert torch.allclose(torch.cat(parts), whole, atol=1e-10, rtol=0), batch_size
        assert ((whole - logits[image_index]).abs().amax(1) > 1e-6).all()  # each ablation shows
        if not all_weights:
            return
        weights = cams.ablation_weights(model, layer, inputs, activations, logits, TARGETS, 3)
        for copy, (n, k) in enumerate(zip(image_index.tolist(), channels.tolist())):
            score = logits[n, TARGETS[n]]
            expected = (score - whole[copy, TARGETS[n]]) / (score.abs() + cams.EPSILON)
            assert torch.allclose(weights[n, :, k], expected, atol=1e-10, rtol=0)
    assert no_hooks_left(model)


class DataDependent(nn.Module):
    """A net with Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if x.sum() > 0:
            x = x * 2
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class SharedLayer(nn.Module):
    """The same ReLU module used twice: its output is no one place to cut after."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("net, layer, reason", [(DataDependent, "conv1", "cannot trace"),
                                                (SharedLayer, "relu", "called 2 times")])
def test_a_net_that_cannot_be_cut_reruns_whole_with_one_line(net, layer, reason, capsys):
    torch.manual_seed(0)
    model = net().double().eval()
    inputs = torch.rand(2, 3, 8, 8).double()
    with pytest.raises(NotSplittable, match=reason):
        split_after(model, layer)
    head, whole, _ = weights_both_ways(model, layer, inputs, TARGETS, 3)
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and lines[0].startswith("note: ablation-cam: ") and reason in lines[0]
    assert "re-running the whole net" in lines[0]
    assert torch.equal(head, whole)
    assert no_hooks_left(model)


def test_split_pieces_compose_to_the_model():
    """body then head is the model, for a layer with a carried skip value and without."""
    model = random_net("resnet18", 64)
    inputs = torch.randn(2, 3, 64, 64).double()
    with torch.no_grad():
        expected = model(inputs)
        for layer in ("layer3", "layer3.0.conv1"):
            split = split_after(model, layer)
            activations, *carried = split.body(inputs)
            assert torch.allclose(split.head(activations, *carried), expected, atol=1e-12)


def test_a_counting_hook_on_a_block_does_not_stop_the_cut(capsys):
    """The evaluation's pass meter hooks the net's first child, MobileNetV2's ``features``
    block, and reads the batch size: torch.fx traces through that block without calling the
    hook (it would be handed a proxy), so the net is still cut, silently, and the hook counts
    the real pass alone."""
    model = random_net("mobilenet_v2", 64)
    inputs = torch.randn(2, 3, 64, 64).double()
    images = []
    handle = model.features.register_forward_pre_hook(
        lambda module, args: images.append(len(args[0])))
    try:
        with torch.no_grad():
            activations = cams.activations_and_gradients(model, "features.18", inputs, None,
                                                         need_gradients=False)[0]
            run = cams.ablated_logits(model, "features.18", inputs)
            run(activations.clone(), torch.tensor([0, 1]))
    finally:
        handle.remove()
    assert images == [2]  # the unablated pass; the head does not enter the block
    assert stderr_lines(capsys.readouterr()) == []
