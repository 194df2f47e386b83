"""ROAD: remove pixels in the map's order and fill them by noisy linear imputation.

Rong, Leemann, Borisov, Kasneci and Kasneci 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods" (ICML), Remove And Debias. Deletion with a fixed colour
(RISE) lets the *shape* of the removed region leak the map: the net sees a hole where the map
was high ("class information leakage"), and MoRF and LeRF can then rank methods in ways
that contradict each other.
ROAD fills every removed pixel with the weighted mean of its 8 neighbours, solved jointly for
all removed pixels (the paper's noisy linear imputation; the authors' ``NoisyLinearImputer``
in github.com/tleemann/road_evaluation, ``road/imputations.py``), plus a little Gaussian
noise, so that the filled region carries neither the removed values nor a trace of the mask.

- MoRF (most relevant first): the top p% of the map's pixels are removed; a faithful map makes
  p(target) drop fast (lower is better).
- LeRF (least relevant first): the bottom p% are removed; p(target) should stay high (higher
  is better).

The authors' code keeps, in its LeRF order, the top p% and removes the rest; over the
percentages 10, 20, ..., 90 that is the same set of masks, so the mean over percentages is
the same; here the curve's x axis is the share *removed* in both orders.
"""
import torch
import torch.nn.functional as F

from model.evaluation.faithfulness import pixel_order
from model.runtime.batching import variant_batch
from model.runtime.device import fast_layout
from model.nets.folding import fold_batch_norm

ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # as in the paper's figures
ROAD_NOISE = 0.01  # the noise's standard deviation in pixel units [0, 1] (the authors' code)
ORDERS = ("morf", "lerf")


def neighbour_sum(values):
    """Weighted sum of each pixel's 8 neighbours, zero outside the image: (N, C, H, W) -> same.

    The authors' weights (``neighbors_weights`` in their ``imputations.py``): 1/6 for the 4
    direct neighbours, 1/12 for the 4 diagonal ones. That kernel is separable but for its
    centre, ([1, 2, 1]^T [1, 2, 1] - 4 delta) / 12, so it is computed as a [1, 2, 1] sum along
    each axis by shifted adds, minus the pixel itself. No convolution, which a GPU may run in
    TF32, too coarse for the solve below; and each output element is summed alone, so the
    result does not depend on the batch.
    """
    rows = 2 * values
    rows[..., 1:, :] += values[..., :-1, :]
    rows[..., :-1, :] += values[..., 1:, :]
    total = 2 * rows
    total[..., 1:] += rows[..., :-1]
    total[..., :-1] += rows[..., 1:]
    return total.mul_(1 / 12).add_(values, alpha=-4 / 12)


# Images from this side up are solved from the imputation at half their resolution
# (:func:`coarse_guess`); below it conjugate gradients start from zero.
COARSE_FROM_SIDE = 32
# The coarse imputations are only a starting point: solved to this relative residual (the
# final one is the caller's). Measured on two 224 px images with 9 MoRF (then LeRF) masks
# each ("AMD EPYC" Zen 5, 2 threads): from zero 4.1 and 4.7 s, from the coarse start 2.7 and
# 3.1 s (full-size steps 14,751 -> 9,269 and 16,663 -> 9,965).
COARSE_TOLERANCE = 1e-3


def linear_imputation(inputs, removed, tolerance=1e-5, max_iterations=None):
    """Fill the removed pixels by the weighted mean of their neighbours (ROAD's linear
    imputation, Rong et al. 2022, without the noise).

    For every removed pixel i and each channel: d_i x_i - sum_j w_ij x_j = sum_k w_ik v_k,
    where j runs over its removed neighbours (unknowns too), k over its kept ones (values v),
    w = 1/6 (direct) or 1/12 (diagonal) and d_i the sum of the weights of the neighbours that
    exist: at the border the weights are renormalized, as in the authors'
    ``setup_sparse_system``. The matrix (a principal block of the 8-neighbour graph Laplacian)
    is symmetric and positive definite when a pixel is kept, so each image and channel is
    solved by conjugate gradients, all at once: a system stops when its residual falls below
    ``tolerance`` times its right-hand side, and leaves the batch (``tests/
    test_trust_metrics.py`` measures the distance to a dense solve).

    From zero, one hole over most of the image takes about 3 H steps (224 px: ~600), since
    each step carries information one pixel further. So images of ``COARSE_FROM_SIDE`` px and
    more start from the same imputation at half the resolution, brought back up
    (:func:`coarse_guess`, recursively: cascadic multigrid, Bornemann & Deuflhard 1996): the
    smooth part of the answer is there from the start. The answer is the same (the same
    equations, the same stopping rule); only the path to it is shorter.

    The imputation is linear and each row's weights sum to 1, so it commutes with a per-channel
    affine normalization: normalized inputs give the normalized imputation of the pixels.

    Args:
        inputs: (N, C, H, W) images.
        removed: (N, H, W) bool, True where a pixel is removed; each image keeps one at least.
        tolerance: relative residual at which a system counts as solved.
        max_iterations: cap on the conjugate-gradient steps (default: 4 (H + W), more than
            one hole across the whole image needs).

    Returns:
        (N, C, H, W): the inputs, the removed pixels replaced by the solution.
    """
    count, channels, height, width = inputs.shape
    if removed.flatten(1).all(1).any():
        raise ValueError("linear imputation needs one kept pixel per image at least")
    max_iterations = max_iterations or 4 * (height + width)
    guess = (coarse_guess(inputs, removed, tolerance)
             if min(height, width) >= COARSE_FROM_SIDE else None)
    # One system per image and channel, each a channel of one image: (1, S, H, W), S = N * C,
    # stored channels-last: the shifts and the sums over pixels then run over contiguous
    # systems (several times faster on the CPU than one image per system).
    mask = removed.to(inputs.dtype).repeat_interleave(channels, 0)[None]
    mask = mask.contiguous(memory_format=torch.channels_last)
    values = inputs.reshape(1, -1, height, width).contiguous(memory_format=torch.channels_last)
    degree = neighbour_sum(torch.ones_like(values[:, :1]))  # (1, 1, H, W): renormalized border
    right = mask * neighbour_sum((1 - mask) * values)  # the kept neighbours' weighted sum

    def apply(x):  # the matrix times x, x zero outside the removed pixels
        return neighbour_sum(x).mul_(-1).addcmul_(degree, x).mul_(mask_left)

    def dot(a, b):
        return (a * b).sum((-2, -1), keepdim=True)  # (1, S, 1, 1)

    def keep(tensor, systems):
        return tensor[:, systems].contiguous(memory_format=torch.channels_last)

    solution = torch.zeros_like(values)
    left = torch.arange(values.shape[1], device=inputs.device)  # the systems not yet solved
    mask_left = mask
    if guess is None:
        x, residual = torch.zeros_like(values), right.clone()
    else:
        x = (guess.reshape(1, -1, height, width) * mask).contiguous(
            memory_format=torch.channels_last)
        residual = right - apply(x)
    direction = residual.clone()
    squared = dot(residual, residual)
    enough = tolerance ** 2 * dot(right, right)
    for step in range(max_iterations):
        active = squared > enough  # a solved system takes no further step, in any batch
        if step % 8 == 0:  # drop the solved systems: the rest run on a smaller batch
            done = ~active.flatten()
            solution[:, left[done]] = x[:, done]
            left, unsolved = left[~done], ~done
            mask_left, x, residual, direction, squared, enough, active = (
                keep(t, unsolved) for t in (mask_left, x, residual, direction, squared, enough,
                                            active))
            if not len(left):
                break
        product = apply(direction)
        length = torch.where(active, squared / dot(direction, product), 0.0)
        x.addcmul_(length, direction)
        residual.addcmul_(length, product, value=-1)
        new_squared = dot(residual, residual)
        direction.mul_(torch.where(active, new_squared / squared, 0.0)).add_(residual)
        squared = torch.where(active, new_squared, squared)
    solution[:, left] = x
    return torch.where(mask.bool(), solution, values).reshape(count, channels, height, width)


def coarse_guess(inputs, removed, tolerance):
    """The imputation at half the resolution, brought back up to ``inputs``'s size: where
    :func:`linear_imputation` starts on large images.

    A coarse pixel (2 x 2 fine ones) is kept when any of its fine pixels is, with their mean
    value; it is removed when all four are. Its imputation (recursively from a coarser one
    still, each to the looser of ``tolerance`` and ``COARSE_TOLERANCE``) is upsampled
    bilinearly. Only a starting point: the fine solve's stopping rule decides the answer.
    """
    kept = (~removed)[:, None].to(inputs.dtype)  # (N, 1, H, W)
    weight = F.avg_pool2d(kept, 2, ceil_mode=True)  # the share of kept fine pixels
    coarse_inputs = F.avg_pool2d(inputs * kept, 2, ceil_mode=True) / weight.clamp_min(1e-12)
    coarse = linear_imputation(coarse_inputs, weight[:, 0] == 0,
                               max(tolerance, COARSE_TOLERANCE))
    return F.interpolate(coarse, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


def removal_masks(maps, percentages, order, generator=None):
    """Which pixels ROAD removes: (N, H, W) maps -> (N, P, H, W) bool, True = removed.

    For each percentage p, MoRF removes the first floor(p * H * W / 100) pixels of the map's
    order (most important first, :func:`~model.evaluation.faithfulness.pixel_order`), LeRF the
    last as many. Pixels of equal value are ordered at random with ``generator`` (a CPU
    generator; the same seed gives the same order), the same way for both orders.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be morf or lerf, not {order!r}")
    if any(not 0 <= p < 100 for p in percentages):
        raise ValueError(f"percentages must lie in [0, 100), not {percentages}")
    count, height, width = maps.shape
    pixels = height * width
    ranks = torch.empty(count, pixels, dtype=torch.int64, device=maps.device)
    ranks.scatter_(1, pixel_order(maps, generator).to(maps.device),
                   torch.arange(pixels, device=maps.device).expand(count, -1))
    removed = torch.tensor([p * pixels // 100 for p in percentages], device=maps.device)
    if order == "lerf":
        ranks = pixels - 1 - ranks  # the least important pixel first
    return (ranks[:, None] < removed[:, None]).view(count, len(percentages), height, width)


@torch.no_grad()
def road_curves(model, inputs, targets, maps, order, percentages=ROAD_PERCENTAGES,
                noise=ROAD_NOISE, pixel_std=None, batch_size=512, generator=None,
                tolerance=1e-5):
    """p(target) after removing p% of the pixels in the map's order, with noisy linear
    imputation (ROAD, Rong et al. 2022: the MoRF and LeRF curves of their figures).

    The paper reports accuracy on the imputed images; this reports the probability of each
    image's target (the authors' code computes both), whose mean over the percentages is the
    score: MoRF lower is better, LeRF higher. Each variant's noise is drawn on the CPU from
    ``generator`` in a fixed order, one variant at a time, so that neither the batch size nor
    the device changes it. All N * P variants run in batches of ``batch_size``, one forward
    per batch.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) images; targets: (N,) class per image; maps: (N, H, W).
        order: ``morf`` or ``lerf``; percentages: the shares removed, in percent, below 100.
        noise: standard deviation of the Gaussian added to each imputed value, in pixel units
            (the authors' 0.01 on images in [0, 1]); 0 for none.
        pixel_std: (C,) the normalization's std per channel when ``inputs`` are normalized
            (the noise is then ``noise / std`` in the inputs' units); None: pixel units.
        generator: a CPU generator; orders tied pixels (:func:`removal_masks`) and draws
            the noise.
        tolerance: of the solve (:func:`linear_imputation`).

    Returns:
        (N, P) target probabilities, one column per percentage.
    """
    count, channels, height, width = inputs.shape
    masks = removal_masks(maps, percentages, order, generator).to(inputs.device)
    sigma = torch.full((channels,), float(noise), dtype=inputs.dtype)
    if pixel_std is not None:
        sigma = sigma / torch.as_tensor(pixel_std, dtype=inputs.dtype)
    sigma = sigma.view(1, channels, 1, 1).to(inputs.device)
    steps = len(percentages)
    curves = torch.empty(count * steps, dtype=inputs.dtype, device=inputs.device)
    batch_size = variant_batch(batch_size, inputs)
    net = fold_batch_norm(model)  # the same probabilities, up to float32 rounding, sooner
    for first in range(0, len(curves), batch_size):
        flat = torch.arange(first, min(first + batch_size, len(curves)), device=inputs.device)
        image = flat // steps
        removed = masks.view(-1, height, width)[flat]  # (B, H, W)
        variants = linear_imputation(inputs[image], removed, tolerance)  # (B, C, H, W)
        if noise:
            draws = torch.stack([torch.randn(channels, height, width, generator=generator,
                                             dtype=inputs.dtype) for _ in range(len(flat))])
            variants = variants + removed[:, None] * sigma * draws.to(inputs.device)
        probabilities = torch.softmax(net(fast_layout(variants)), dim=1)
        curves[flat] = probabilities.gather(1, targets[image, None])[:, 0]
    return curves.view(count, steps)
