"""ROAD (Rong et al. 2022) and Average Drop / Increase in Confidence (Grad-CAM++, sec. 4.1)
against brute-force computations on tiny float64 nets and 6 x 6 images, each with a mutation
of the code that the comparison must catch."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.evaluation import scoring
from model.data.datasets import DATASET_INFO
from model.evaluation import road
from model.evaluation.faithfulness import (
    average_drop,
    explanation_map_probabilities,
    increase_in_confidence,
    pixel_order,
)
from model.evaluation.ground_truth import mass_inside, pointing_hits
from model.nets.architectures import build_model

# The authors' neighbour weights (road_evaluation, imputations.py), written out again here.
WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6, (0, 1): 1 / 6,
           (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}


def tiny_net(classes=5, side=6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * side * side, classes)).double().eval()


def brute_force_imputation(image, removed, weights=WEIGHTS, renormalize=True):
    """The linear system built pixel by pixel, solved densely: (C, H, W), (H, W) -> (C, H, W).

    Row of removed pixel i: (sum of its existing neighbours' weights) x_i - sum over removed
    neighbours w x_j = sum over kept neighbours w v_k. ``renormalize=False`` puts the full
    weight 1 on the diagonal at the border too (a wrong variant).
    """
    channels, height, width = image.shape
    unknown = {}
    for i in range(height):
        for j in range(width):
            if removed[i, j]:
                unknown[(i, j)] = len(unknown)
    matrix = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    right = torch.zeros(len(unknown), channels, dtype=torch.float64)
    for (i, j), row in unknown.items():
        for (di, dj), weight in weights.items():
            a, b = i + di, j + dj
            if not (0 <= a < height and 0 <= b < width):
                continue
            matrix[row, row] += weight
            if removed[a, b]:
                matrix[row, unknown[(a, b)]] -= weight
            else:
                right[row] += weight * image[:, a, b]
        if not renormalize:
            matrix[row, row] = 1.0
    solution = torch.linalg.solve(matrix, right)
    result = image.clone()
    for (i, j), row in unknown.items():
        result[:, i, j] = solution[row]
    return result


def imputation_matches(impute, images, removed):
    """Does ``impute`` (N, C, H, W), (N, H, W) -> (N, C, H, W) give the brute force's answer?"""
    expected = torch.stack([brute_force_imputation(x, r) for x, r in zip(images, removed)])
    return torch.allclose(impute(images, removed), expected, rtol=0, atol=1e-10)


def exact(images, removed):
    return road.linear_imputation(images, removed, tolerance=1e-13)


def random_case(count=3, side=6, share=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, side, side, generator=generator, dtype=torch.float64)
    removed = torch.rand(count, side, side, generator=generator) < share
    removed[:, 0, 0], removed[:, -1, -1] = True, False  # a corner removed, one pixel kept
    return images, removed


def test_imputation_is_the_dense_solve_and_keeps_the_kept_pixels():
    images, removed = random_case()
    assert imputation_matches(exact, images, removed)
    imputed = exact(images, removed)
    kept = ~removed[:, None].expand_as(images)
    assert torch.equal(imputed[kept], images[kept])
    # Removed neighbours are unknowns too: a hole surrounded by a constant is that constant.
    constant = torch.full((1, 3, 6, 6), 0.3, dtype=torch.float64)
    hole = torch.zeros(1, 6, 6, dtype=torch.bool)
    hole[0, 1:5, 0:4] = True  # touches the border
    assert torch.allclose(exact(constant, hole), constant, atol=1e-12)
    with pytest.raises(ValueError, match="kept pixel"):
        road.linear_imputation(images[:1], torch.ones(1, 6, 6, dtype=torch.bool))


def test_imputation_mutations_are_caught(monkeypatch):
    images, removed = random_case()
    # The border matters in this case: without renormalization the answer is another.
    wrong_border = torch.stack([brute_force_imputation(x, r, renormalize=False)
                                for x, r in zip(images, removed)])
    assert not torch.allclose(exact(images, removed), wrong_border, atol=1e-6)

    def equal_weights(values):  # 1/8 for every neighbour instead of 1/6 and 1/12
        padded = F.pad(values, (1, 1, 1, 1))
        height, width = values.shape[-2:]
        return sum(padded[..., 1 + i:1 + i + height, 1 + j:1 + j + width] / 8
                   for i, j in WEIGHTS)

    monkeypatch.setattr(road, "neighbour_sum", equal_weights)
    assert not imputation_matches(exact, images, removed)


def test_float32_imputation_is_within_a_measured_tolerance_of_the_dense_solve():
    """The default tolerance (relative residual 1e-5) on 32 px float32 images, one large hole
    (90% removed around a point: the slowest case) and scattered holes (50% of a random map):
    measured max error 2.7e-5 and 5.3e-6 in pixel units (tolerance 1e-4: 4.7e-5 and 2.2e-4),
    350 times below ROAD's noise; asserted below 1e-4."""
    side = 32
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, side, side, generator=generator)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    blob = -((rows - 10.0) ** 2 + (columns - 13.0) ** 2)
    maps = torch.stack([blob, torch.rand(side, side, generator=generator)])
    removed = torch.stack([road.removal_masks(maps[:1], [90], "morf", generator)[0, 0],
                           road.removal_masks(maps[1:], [50], "morf", generator)[0, 0]])
    imputed = road.linear_imputation(images, removed)
    expected = torch.stack([brute_force_imputation(x.double(), r)
                            for x, r in zip(images, removed)])
    assert (imputed.double() - expected).abs().max() < 1e-4


def dense_system(image, removed):
    """The imputation's matrix and right-hand side from the whole grid's graph Laplacian, by
    tensor ops (the brute force's pixel loop is too slow at 40 px): (C, H, W), (H, W) ->
    A (U, U), b (U, C) over the U removed pixels in row-major order."""
    channels, height, width = image.shape
    index = torch.arange(height * width).view(height, width)
    laplacian = torch.zeros(height * width, height * width, dtype=torch.float64)
    for (di, dj), weight in WEIGHTS.items():
        rows = index[max(0, -di):height - max(0, di), max(0, -dj):width - max(0, dj)]
        columns = index[max(0, di):height - max(0, -di), max(0, dj):width - max(0, -dj)]
        laplacian[rows.flatten(), columns.flatten()] -= weight
        laplacian[rows.flatten(), rows.flatten()] += weight  # renormalized at the border
    unknown = removed.flatten()
    matrix = laplacian[unknown][:, unknown]
    right = -laplacian[unknown][:, ~unknown] @ image.flatten(1)[:, ~unknown].T
    return matrix, right


def large_holes(height, width, seed=1):
    """Three (H, W) masks: a large central hole, 70% scattered pixels, a hole over two
    borders."""
    generator = torch.Generator().manual_seed(seed)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    central = (((rows - height / 2) / (0.4 * height)) ** 2
               + ((columns - width / 2) / (0.4 * width)) ** 2) < 1
    scattered = torch.rand(height, width, generator=generator) < 0.7
    border = (rows < 0.6 * height) | (columns > 0.7 * width)
    return torch.stack([central, scattered, border])


def count_v_cycles(monkeypatch):
    """A list that grows by one at each conjugate-gradient step of road.linear_imputation."""
    steps, real_v_cycle = [], road.v_cycle

    def counting(levels, residual, depth=0):
        if depth == 0:
            steps.append(residual.shape[1])
        return real_v_cycle(levels, residual, depth)

    monkeypatch.setattr(road, "v_cycle", counting)
    return steps


def test_multigrid_imputation_meets_the_residual_rule_and_is_the_dense_solve(monkeypatch):
    """Large holes at 40 x 40 and 37 x 29 px (odd sides: coarse pixels over 2 x 1 and 1 x 1
    fine ones), float64. The stopping rule ||b - A x|| <= tolerance ||b|| holds on the true
    residual of each image and channel, and bounds the error by the smallest eigenvalue of A:
    ||x - x*||_max <= ||x - x*||_2 <= ||b - A x||_2 / lambda_min <= tolerance ||b||_2 /
    lambda_min. At tolerance 1e-5 that bound is 5e-4 to 9e-3 here (lambda_min 1e-3 to 0.1),
    the error measured 5e-6 to 2e-5; at 1e-12, 5e-11 to 9e-10 and 2e-13 to 9e-13. Conjugate
    gradients take 8 multigrid-preconditioned steps at 1e-5 (asserted: 10 at most), at 96 px
    as at 40; 18 at 1e-12 (asserted: 25)."""
    steps = count_v_cycles(monkeypatch)
    for height, width in ((40, 40), (37, 29)):
        images = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64)
        removed = large_holes(height, width)
        systems = [dense_system(x, r) for x, r in zip(images, removed)]
        expected = [torch.linalg.solve(matrix, right) for matrix, right in systems]
        smallest = [torch.linalg.eigvalsh(matrix)[0] for matrix, _ in systems]
        for tolerance in (1e-5, 1e-12):
            steps.clear()
            imputed = road.linear_imputation(images, removed, tolerance)
            assert len(steps) <= (10 if tolerance == 1e-5 else 25), steps
            for n, ((matrix, right), solution) in enumerate(zip(systems, expected)):
                x = imputed[n].flatten(1)[:, removed[n].flatten()].T  # (U, C)
                size = right.norm(dim=0)
                assert ((right - matrix @ x).norm(dim=0) <= tolerance * size * 1.0001).all()
                bound = tolerance * size / smallest[n]
                assert ((x - solution).abs().amax(0) <= bound).all(), (height, n, tolerance)
    generator = torch.Generator().manual_seed(0)
    steps.clear()
    road.linear_imputation(torch.rand(3, 3, 96, 96, generator=generator), large_holes(96, 96))
    assert len(steps) <= 10, steps


def test_the_v_cycle_is_symmetric_positive_definite_and_clusters_the_spectrum():
    """Conjugate gradients need a symmetric positive definite preconditioner B: assembled
    column by column (each column a system), it is, and B A's eigenvalues lie in [0.39, 1.05]
    (measured; condition 1.8 to 2.7) where A's condition is 10 (scattered pixels) to 425 (the
    hole over two borders), 24 x 20 px."""
    height, width = 24, 20
    for removed in large_holes(height, width):
        matrix, _ = dense_system(torch.zeros(1, height, width, dtype=torch.float64), removed)
        unknowns = int(removed.sum())
        columns = torch.zeros(1, unknowns, height * width, dtype=torch.float64)
        columns[0, torch.arange(unknowns), removed.flatten().nonzero()[:, 0]] = 1
        columns = columns.view(1, unknowns, height, width).contiguous(
            memory_format=torch.channels_last)
        mask = removed.to(torch.float64).expand_as(columns).contiguous(
            memory_format=torch.channels_last)
        preconditioner = road.v_cycle(road.multigrid_levels(mask), columns)
        preconditioner = preconditioner.flatten(2)[0][:, removed.flatten()]  # (U, U)
        assert torch.allclose(preconditioner, preconditioner.T, rtol=0, atol=1e-13)
        factor = torch.linalg.cholesky(preconditioner)  # positive definite, or this raises
        spectrum = torch.linalg.eigvalsh(factor.T @ matrix @ factor)  # those of B A
        assert spectrum[0] > 0.3 and spectrum[-1] < 1.1, spectrum


def test_removal_masks_follow_the_map_and_break_ties_the_same_way_each_time():
    values = torch.randperm(36, generator=torch.Generator().manual_seed(0)).double()
    maps = values.view(1, 6, 6)
    for p in (10, 50, 90):
        count = p * 36 // 100
        morf = road.removal_masks(maps, [p], "morf")[0, 0]
        lerf = road.removal_masks(maps, [p], "lerf")[0, 0]
        assert morf.sum() == lerf.sum() == count
        assert torch.equal(morf, maps[0] >= 36 - count)  # the largest values
        assert torch.equal(lerf, maps[0] < count)  # the smallest
    # Ties: pixels of higher value go first; within a tie, pixel_order's seeded shuffle.
    tied = torch.tensor([[[2.0, 1, 1], [1, 0, 0], [1, 3, 0]]])
    for seed in range(3):
        masks = road.removal_masks(tied, [33, 66], "morf", torch.Generator().manual_seed(seed))
        order = pixel_order(tied, torch.Generator().manual_seed(seed))[0]
        assert masks[0, 0].flatten().nonzero()[:, 0].tolist() == sorted(order[:2].tolist())
        assert masks[0, 1].flatten()[[0, 7]].all() and masks[0, 1].sum() == 5
        again = road.removal_masks(tied, [33, 66], "morf", torch.Generator().manual_seed(seed))
        assert torch.equal(masks, again)
        lerf = road.removal_masks(tied, [33], "lerf", torch.Generator().manual_seed(seed))
        removed = set(lerf[0, 0].flatten().nonzero()[:, 0].tolist())
        assert removed == set(order[-2:].tolist()) and removed < {4, 5, 8}  # 2 of the zeros
    with pytest.raises(ValueError):
        road.removal_masks(tied, [100], "morf")


@torch.no_grad()
def brute_force_road(model, images, targets, maps, order, percentages, seed):
    """One variant at a time: the removed set from the map's order (ties as pixel_order with
    the same seed), imputed by the dense solve, one forward each."""
    ranking = pixel_order(maps, torch.Generator().manual_seed(seed))
    count, _, height, width = images.shape
    curves = torch.zeros(count, len(percentages), dtype=torch.float64)
    for n in range(count):
        ranked = ranking[n].tolist()
        if order == "lerf":
            ranked = ranked[::-1]
        for column, p in enumerate(percentages):
            removed = torch.zeros(height * width, dtype=torch.bool)
            for pixel in ranked[:p * height * width // 100]:
                removed[pixel] = True
            variant = brute_force_imputation(images[n], removed.view(height, width))
            probabilities = torch.softmax(model(variant[None]), dim=1)
            curves[n, column] = probabilities[0, targets[n]]
    return curves


def test_road_curves_match_the_brute_force_and_do_not_depend_on_the_batch():
    model = tiny_net()
    images, _ = random_case()
    targets = torch.tensor([0, 3, 1])
    maps = torch.randint(0, 6, (3, 6, 6), generator=torch.Generator().manual_seed(1)).double()
    percentages = (10, 40, 90)
    for order in road.ORDERS:
        curves = road.road_curves(model, images, targets, maps, order, percentages, noise=0,
                                  generator=torch.Generator().manual_seed(4), tolerance=1e-13)
        expected = brute_force_road(model, images, targets, maps, order, percentages, seed=4)
        assert torch.allclose(curves, expected, rtol=0, atol=1e-10), order
    # With noise: batch sizes 1 and 3 give the same curves (the noise is drawn per variant).
    batched = [road.road_curves(model, images, targets, maps, "morf", percentages,
                                batch_size=size, generator=torch.Generator().manual_seed(4))
               for size in (1, 3)]
    assert torch.allclose(batched[0], batched[1], rtol=0, atol=1e-12)


def test_road_noise_is_added_to_the_removed_pixels_alone_at_the_asked_scale():
    class Recorder(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.seen = net, []

        def forward(self, inputs):
            self.seen.append(inputs.clone())
            return self.net(inputs)

    model = Recorder(tiny_net())
    images, _ = random_case(count=4, seed=5)
    maps = torch.rand(4, 6, 6, dtype=torch.float64)
    percentages = (30, 60, 90)
    road.road_curves(model, images, torch.zeros(4, dtype=torch.long), maps, "morf",
                     percentages, noise=0.01, pixel_std=(0.5, 0.25, 0.1),
                     generator=torch.Generator().manual_seed(0), tolerance=1e-13)
    variants = torch.cat(model.seen).view(4, 3, 3, 6, 6)  # (N, P, C, H, W)
    removed = road.removal_masks(maps, percentages, "morf", torch.Generator().manual_seed(0))
    exact_fill = exact(images.repeat_interleave(3, 0), removed.flatten(0, 1)).view(4, 3, 3, 6, 6)
    noise = (variants - exact_fill).transpose(1, 2)  # (N, C, P, H, W)
    where = removed[:, None].expand_as(noise)
    assert torch.equal(noise[~where], torch.zeros_like(noise[~where]))  # kept pixels as they were
    for channel, std in enumerate((0.5, 0.25, 0.1)):
        sample = noise[:, channel][removed]
        assert abs(float(sample.std()) - 0.01 / std) < 0.15 * 0.01 / std, channel


@torch.no_grad()
def brute_force_confidence(model, images, targets, maps, info):
    """Y, O per image with the formulas of Grad-CAM++ sec. 4.1, one image at a time."""
    full, explained = [], []
    for image, target, heat in zip(images, targets, maps):
        heat = F.interpolate(heat[None, None], size=image.shape[-2:], mode="bilinear",
                             align_corners=False)[0, 0]
        heat = (heat - heat.min()) / (heat.max() - heat.min())
        if info is None:
            masked = heat * image
        else:
            mean = torch.tensor(info.mean, dtype=torch.float64).view(-1, 1, 1)
            std = torch.tensor(info.std, dtype=torch.float64).view(-1, 1, 1)
            pixels = (image * std + mean).clamp(0, 1)
            masked = (heat * pixels - mean) / std
        full.append(float(torch.softmax(model(image[None]), 1)[0, target]))
        explained.append(float(torch.softmax(model(masked[None]), 1)[0, target]))
    return full, explained


def brute_average_drop(full, explained):
    return 100 * sum(max(0.0, y - o) / y for y, o in zip(full, explained)) / len(full)


def brute_increase(full, explained):
    return 100 * sum(y < o for y, o in zip(full, explained)) / len(full)


def test_average_drop_and_increase_in_confidence_match_the_per_image_formulas():
    model = tiny_net()
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(7, 3, 6, 6, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1])  # 7: no even split of rises and drops
    for maps, info in ((torch.rand(7, 6, 6, generator=generator, dtype=torch.float64), None),
                       (torch.rand(7, 3, 3, generator=generator, dtype=torch.float64),
                        DATASET_INFO["cifar10"])):
        full, explained = explanation_map_probabilities(model, images, targets, maps, info)
        want_full, want_explained = brute_force_confidence(model, images, targets, maps, info)
        assert torch.allclose(full, torch.tensor(want_full, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(explained, torch.tensor(want_explained, dtype=torch.float64),
                              atol=1e-12)
        # Both signs occur, so max(0, .) and the strict < matter here.
        assert (full < explained).any() and (full > explained).any()
        # Relative: a Y of 1e-3 turns a 1e-12 difference in probability into 1e-9.
        assert float(average_drop(full, explained)) == pytest.approx(
            brute_average_drop(want_full, want_explained), rel=1e-7)
        assert float(increase_in_confidence(full, explained)) == pytest.approx(
            brute_increase(want_full, want_explained), rel=1e-12)
        # Mutations the comparison catches: no max(0, .), and counting decreases instead.
        no_clamp = 100 * ((full - explained) / full).mean()
        assert float(no_clamp) != pytest.approx(brute_average_drop(want_full, want_explained),
                                                abs=1e-3)
        decreases = 100 * (full > explained).double().mean()
        assert float(decreases) != pytest.approx(brute_increase(want_full, want_explained))
        # The same numbers in batches of one image and of all seven.
        one = explanation_map_probabilities(model, images, targets, maps, info, batch_size=2)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12)
                   for a, b in zip(one, (full, explained)))


def test_the_evaluation_scores_and_counts_the_new_metrics():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    inputs, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    settings = scoring.Settings(DATASET_INFO["shapes"], "conv4")
    result = scoring.score_methods(model, inputs, targets, ["saliency", "random"], settings,
                              steps=4, sanity_images=2)
    for method in ("saliency", "random"):
        scores = result.scores[method]
        assert 0 <= scores["road_morf"] <= 1 and 0 <= scores["road_lerf"] <= 1
        assert 0 <= scores["average_drop"] <= 100
        assert scores["increase_in_confidence"] in (0.0, 50.0, 100.0)
        assert result.curves[method]["road_morf"].shape == (2, len(road.ROAD_PERCENTAGES))
        assert scores["forward_passes_per_image"] <= 1  # the method's own cost only
    costs = scoring.metric_cost_summary(result)
    assert costs["deletion_insertion"]["forward_passes_per_image"] == 2 * (4 + 1)
    assert costs["road"]["forward_passes_per_image"] == 2 * len(road.ROAD_PERCENTAGES)
    assert costs["average_drop"]["forward_passes_per_image"] == 2


def test_the_pointing_game_explains_the_true_class():
    """Zhang et al. 2016 point with the ground-truth category's map: a misclassified image is
    explained once more, for its label; the other metrics keep the predicted class's map.
    In float64: the evaluation computes the maps in chunks of 4, the reference all 6 at once,
    and a pointing hit is an argmax that float32's batch-dependent rounding could flip."""
    torch.manual_seed(1)
    model = build_model("vgg", 3, 6, 16).double().eval()
    inputs = torch.randn(6, 3, 16, 16).double()
    predicted, labels = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 1, 5, 4, 3, 2])
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[:, 2:7, 9:14] = True
    settings = scoring.Settings(DATASET_INFO["shapes"], "conv3", batch_size=4)
    result = scoring.score_methods(model, inputs, predicted, ["gradcam"], settings, masks=masks,
                              steps=2, sanity_images=1, labels=labels)
    truth = scoring.attribution_maps("gradcam", model, inputs, labels, settings)
    decision = scoring.attribution_maps("gradcam", model, inputs, predicted, settings)
    assert result.scores["gradcam"]["mass_inside"] == pytest.approx(
        float(mass_inside(truth, masks).mean()), abs=1e-6)
    hits = pointing_hits(truth, masks).float().mean()
    assert result.scores["gradcam"]["pointing"] == float(hits)
    assert float(mass_inside(decision, masks).mean()) != pytest.approx(
        result.scores["gradcam"]["mass_inside"], abs=1e-4)  # the test can tell
    assert torch.allclose(result.maps["gradcam"], decision, atol=1e-6)  # the decision's maps
