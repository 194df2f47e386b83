"""The evaluation metrics on cases with a known answer, and against brute-force references."""
import time

import torch
import torch.nn as nn

from model.attribution import METHODS
from model.data.datasets import DATASET_INFO
from model.evaluation.cost import measure_cost
from model.evaluation.faithfulness import (
    area_under_curve,
    average_ranks,
    cascading_randomization,
    deletion_insertion_curves,
    evaluated_stages,
    pixel_order,
    randomization_stages,
    spearman,
)
from model.evaluation.ground_truth import mass_inside, pointing_hits
from model.nets.architectures import build_model


class RegionSum(nn.Module):
    """Class 0's logit is a weighted sum of the pixels in a region, class 1's is 2."""

    def __init__(self, region):
        super().__init__()
        self.first = nn.Flatten()
        self.register_buffer("region", region.flatten().float())

    def forward(self, inputs):
        score = self.first(inputs[:, :1]) @ self.region
        return torch.stack([score, torch.full_like(score, 2.0)], dim=1)


def test_pointing_and_mass_of_a_perfect_and_a_random_map():
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 5:9] = True
    assert pointing_hits(masks.float(), masks, dilation=0).all()
    assert torch.allclose(mass_inside(masks.float(), masks, dilation=0), torch.ones(4))
    random_maps = torch.rand(4000, 16, 16, generator=torch.Generator().manual_seed(0))
    many = masks[:1].expand(4000, -1, -1)
    share = 16 / 256
    assert abs(pointing_hits(random_maps, many, 0).float().mean() - share) < 0.02
    assert abs(mass_inside(random_maps, many, 0).mean() - share) < 0.01
    assert mass_inside(torch.ones(1, 16, 16), masks[:1], 0) == 0  # constant: no evidence


def test_average_ranks_share_ties_and_spearman_matches_brute_force():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])
    assert average_ranks(values).tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0]]

    def brute_ranks(row):
        return [sum(v < x for v in row) + (sum(v == x for v in row) + 1) / 2 for x in row]

    generator = torch.Generator().manual_seed(1)
    first = torch.randint(0, 5, (3, 40), generator=generator).float()  # many ties
    second = torch.randint(0, 5, (3, 40), generator=generator).float()
    expected = []
    for a, b in zip(first.tolist(), second.tolist()):
        ra, rb = torch.tensor(brute_ranks(a)), torch.tensor(brute_ranks(b))
        expected.append(float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]))
    assert torch.allclose(spearman(first, second), torch.tensor(expected), atol=1e-5)
    x = torch.randn(2, 50, generator=generator)
    assert torch.allclose(spearman(x, x.exp()), torch.ones(2))
    assert torch.allclose(spearman(x, -x), -torch.ones(2))
    assert spearman(torch.ones(1, 9), x[:1, :9]).item() == 0.0


def test_pixel_order_ranks_by_value_and_breaks_ties_at_random():
    maps = torch.tensor([[[0.0, 5.0], [1.0, 0.0]]])
    for seed in range(4):
        order = pixel_order(maps, torch.Generator().manual_seed(seed))[0].tolist()
        assert order[:2] == [1, 2] and sorted(order[2:]) == [0, 3]
    orders = {tuple(pixel_order(torch.zeros(1, 4, 4), torch.Generator().manual_seed(s))[0]
                    .tolist()) for s in range(5)}
    assert len(orders) > 1  # ties do not always fall in raster order


def brute_force_curves(model, inputs, targets, maps, mode, steps, substrate):
    """One variant at a time, straight from the definition."""
    count, _, height, width = inputs.shape
    curves = torch.zeros(count, steps + 1, dtype=inputs.dtype)
    for n in range(count):
        order = pixel_order(maps[n:n + 1], torch.Generator().manual_seed(0))[0]
        for s in range(steps + 1):
            changed = int(round(s * height * width / steps))
            mask = torch.zeros(height * width, dtype=torch.bool)
            mask[order[:changed]] = True
            mask = mask.view(1, height, width)
            if mode == "deletion":
                variant = torch.where(mask, substrate[n], inputs[n])
            else:
                variant = torch.where(mask, inputs[n], substrate[n])
            with torch.no_grad():
                curves[n, s] = torch.softmax(model(variant[None]), 1)[0, targets[n]]
    return curves


def test_deletion_insertion_equal_a_brute_force_loop_for_any_batch_size():
    torch.manual_seed(0)
    # float64: CPU kernels round each batch size differently (and differently per CPU).
    model = build_model("vgg", 3, 4, 8).eval().double()
    inputs = torch.randn(3, 3, 8, 8).double()
    targets = torch.tensor([0, 2, 3])
    maps = torch.rand(3, 8, 8)
    for mode, substrate in (("deletion", torch.zeros_like(inputs)),
                            ("insertion", torch.randn(3, 3, 8, 8).double())):
        expected = brute_force_curves(model, inputs, targets, maps, mode, 5, substrate)
        for batch_size in (1, 4, 100):
            curves = deletion_insertion_curves(model, inputs, targets, maps, mode, 5, substrate,
                                               batch_size, torch.Generator().manual_seed(0))
            assert curves.dtype == torch.float64
            assert torch.allclose(curves, expected, atol=1e-12, rtol=0)


def test_a_perfect_map_beats_a_random_one_and_random_deletion_mirrors_insertion():
    region = torch.zeros(16, 16)
    region[2:6, 9:13] = 1.0
    model = RegionSum(region * 6 / region.sum()).eval()  # p(class 0) from 0.12 to 0.98
    inputs = torch.ones(1, 1, 16, 16).expand(64, -1, -1, -1)
    targets = torch.zeros(64, dtype=torch.int64)
    zeros = torch.zeros_like(inputs)
    perfect = region.expand(64, -1, -1)
    random_maps = torch.rand(64, 16, 16, generator=torch.Generator().manual_seed(0))

    def areas(maps, mode):
        curves = deletion_insertion_curves(model, inputs, targets, maps, mode, 32, zeros)
        return area_under_curve(curves).mean()

    assert areas(perfect, "deletion") < areas(random_maps, "deletion") - 0.3
    assert areas(perfect, "insertion") > areas(random_maps, "insertion") + 0.3
    # With the same substrate, deleting in random order is inserting in reverse random order.
    assert abs(areas(random_maps, "deletion") - areas(random_maps, "insertion")) < 0.03


def test_area_under_curve_is_the_trapezoid_rule():
    curves = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(area_under_curve(curves), torch.tensor([1.0, 0.5, 0.25]))


def test_cascading_randomization_goes_top_down_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    for name, value in model.state_dict().items():  # move BatchNorm away from its init
        if "bn" in name and value.dtype.is_floating_point:
            value.uniform_(0.5, 1.5)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    stages = [name for name, _ in randomization_stages(model)]
    assert stages == ["fc", "conv4", "conv3", "conv2", "conv1"]
    changed_by_stage = []
    for name, randomized in cascading_randomization(model, seed=3):
        changed_by_stage.append({k.split(".")[0] for k, v in randomized.state_dict().items()
                                 if v.dtype.is_floating_point and not torch.equal(v, original[k])})
    assert changed_by_stage[0] == {"fc"}
    assert changed_by_stage[1] == {"fc", "conv4", "bn4"}
    assert changed_by_stage[-1] == {"fc"} | {f"{p}{i}" for p in ("conv", "bn") for i in range(1, 5)}
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), state)
    again = [m for _, m in cascading_randomization(model, seed=3)][-1]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 randomized.state_dict().values()))


def test_a_capped_cascade_shows_spread_stages_of_the_same_cumulative_randomization():
    """With ``points`` the cascade yields fewer stages, first and last among them, and each
    is the model the full cascade has at that stage (the layers between randomized too)."""
    assert evaluated_stages(5, 10) == [0, 1, 2, 3, 4]
    spread = evaluated_stages(20, 10)
    assert len(spread) == 10 and spread[0] == 0 and spread[-1] == 19
    assert max(b - a for a, b in zip(spread, spread[1:])) == 3  # even: 19 / 9 steps of 2-3
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    full = list(cascading_randomization(model, seed=3))
    capped = list(cascading_randomization(model, seed=3, points=3))
    assert [name for name, _ in capped] == ["fc", "conv3", "conv1"]
    for (name, randomized), index in zip(capped, (0, 2, 4)):
        assert full[index][0] == name
        assert all(torch.equal(a, b) for a, b in zip(randomized.state_dict().values(),
                                                     full[index][1].state_dict().values()))


def test_measure_cost_counts_passes_and_removes_its_hooks():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    inputs = torch.randn(5, 3, 16, 16, requires_grad=True)
    with measure_cost(model, "cpu") as cost:
        with torch.no_grad():
            model(inputs)
            model(inputs[:2])
        model(inputs).sum().backward()
    assert (cost.forward_images, cost.backward_images) == (12, 5)
    assert cost.seconds > 0 and cost.peak_bytes >= 0
    summary = cost.per_image(5)
    assert summary["forward_passes_per_image"] == 12 / 5
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_measure_cost_counts_the_passes_that_skip_the_first_layer():
    """Incremental occlusion recomputes only each patch's box (no call of the first layer as a
    module) and Ablation-CAM runs only the layers after its layer: each of their passes is
    counted all the same, as the plain form's (the images reaching the output layer)."""
    torch.manual_seed(1)
    model = build_model("vgg", 3, 6, 16).eval()
    inputs, targets = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    counted = {}
    for incremental in (False, True):
        with measure_cost(model, "cpu") as cost:
            METHODS["occlusion"](model, inputs, targets, info=DATASET_INFO["shapes"], patch=4,
                                 stride=4, incremental=incremental)
        counted[incremental] = cost.forward_images
    assert counted[False] == 2 * (1 + 16), counted  # unoccluded + 4 x 4 positions
    # the same, plus the plan's pass that finds every layer's shape and the unoccluded pass
    # per image whose layer outputs it keeps (the hook on the first layer counted 2 in all)
    assert counted[True] == 2 * (1 + 16) + 1 + 2, counted
    with measure_cost(model, "cpu") as cost:
        METHODS["ablationcam"](model, inputs, targets, layer="conv4")
    channels = model.get_submodule("conv4").out_channels
    assert cost.forward_images == 2 * (1 + channels)  # the whole pass, one per channel


def test_measure_cost_sees_memory_freed_before_the_block_ends():
    model = build_model("simple", 1, 2, 8)
    with measure_cost(model, "cpu") as cost:
        buffer = torch.ones(16 * 2 ** 20)  # 64 MiB, held for 50 ms then freed
        time.sleep(0.05)
        del buffer
    assert 60 * 2 ** 20 < cost.peak_bytes < 200 * 2 ** 20


def test_cascading_randomization_takes_torchvision_blocks_whole():
    """ResNet-18: the head, then each residual block with all its convs and BatchNorms (the
    downsampling path included), then the stem conv with its BatchNorm."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 4, 32).eval()
    stages = randomization_stages(model)
    blocks = [f"layer{stage}.{block}" for stage in range(4, 0, -1) for block in (1, 0)]
    assert [name for name, _ in stages] == ["fc", *blocks, "conv1"]
    modules = dict(stages)
    assert modules["layer4.0"] == [model.layer4[0].conv1, model.layer4[0].bn1,
                                   model.layer4[0].conv2, model.layer4[0].bn2,
                                   model.layer4[0].downsample[0], model.layer4[0].downsample[1]]
    assert modules["conv1"] == [model.conv1, model.bn1]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    second = [m for _, (_, m) in zip(range(2), cascading_randomization(model, seed=1))][-1]
    changed = {".".join(k.split(".")[:2 if k.startswith("layer") else 1])
               for k, v in second.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, original[k])}
    assert changed == {"fc", "layer4.1"}
    mobilenet = [name for name, _ in randomization_stages(build_model("mobilenet_v2", 3, 4, 32))]
    assert mobilenet[:3] == ["classifier.1", "features.18", "features.17"]
