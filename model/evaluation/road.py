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


# The multigrid preconditioner of :func:`linear_imputation`: Jacobi steps before and after
# each coarse correction (as many after as before, so the V-cycle is symmetric), and the side
# at which the grid stops halving. One step each way was the fastest (224 px photos, CAM-like
# holes, 9 MoRF or 9 LeRF masks: 10-12 conjugate-gradient steps; two each way: 8-9 steps,
# each dearer, no faster in all).
SMOOTHING_STEPS = 1
COARSEST_SIDE = 2
# Conjugate-gradient steps at most: tolerance 1e-5 takes 8-12 at any size, 1e-13 about 19.
MAX_ITERATIONS = 100


def imputation_matrix_times(x, mask, degree):
    """The imputation's matrix times ``x`` (zero outside the removed pixels), per system:
    d_i x_i - sum_j w_ij x_j on the removed pixels i, zero elsewhere. (1, S, H, W) -> same;
    ``mask`` (1, S, H, W) is 1 where removed, ``degree`` (1, 1, H, W) the d_i."""
    return neighbour_sum(x).mul_(-1).addcmul_(degree, x).mul_(mask)


def linear_imputation(inputs, removed, tolerance=1e-5, max_iterations=MAX_ITERATIONS):
    """Fill the removed pixels by the weighted mean of their neighbours (ROAD's linear
    imputation, Rong et al. 2022, without the noise).

    For every removed pixel i and each channel: d_i x_i - sum_j w_ij x_j = sum_k w_ik v_k,
    where j runs over its removed neighbours (unknowns too), k over its kept ones (values v),
    w = 1/6 (direct) or 1/12 (diagonal) and d_i the sum of the weights of the neighbours that
    exist: at the border the weights are renormalized, as in the authors'
    ``setup_sparse_system``. The matrix A (a principal block of the 8-neighbour graph
    Laplacian) is symmetric and positive definite when a pixel is kept, so each image and
    channel is solved by preconditioned conjugate gradients, all at once: a system stops when
    its residual ||b - A x|| falls below ``tolerance`` times ||b||, and leaves the batch
    (``tests/test_trust_metrics.py`` compares with a dense solve).

    Plain conjugate gradients carry information one pixel further per step, so a hole over
    most of a 224 px image took hundreds of steps. The preconditioner is one multigrid V-cycle
    (:func:`v_cycle`; multigrid-preconditioned conjugate gradients, Tatebe 1993, "The
    multigrid preconditioned conjugate gradient method"; the V-cycle as in Briggs, Henson and
    McCormick 2000, "A Multigrid Tutorial", ch. 3): Jacobi smoothing, bilinear interpolation
    and its transpose, and on each coarser grid the same equations rediscretized, a coarse
    pixel (2 x 2 fine ones) unknown when all four are removed. The V-cycle is symmetric and
    positive definite, so conjugate gradients still minimize the error in A's norm; the steps
    then hardly grow with the image (8-12 from 40 to 224 px at tolerance 1e-5). The answer is
    the same: the same equations and the same stopping rule, on the fine system.

    The imputation is linear and each row's weights sum to 1, so it commutes with a per-channel
    affine normalization: normalized inputs give the normalized imputation of the pixels.

    Args:
        inputs: (N, C, H, W) images.
        removed: (N, H, W) bool, True where a pixel is removed; each image keeps one at least.
        tolerance: relative residual at which a system counts as solved.
        max_iterations: cap on the conjugate-gradient steps.

    Returns:
        (N, C, H, W): the inputs, the removed pixels replaced by the solution.
    """
    count, channels, height, width = inputs.shape
    if removed.flatten(1).all(1).any():
        raise ValueError("linear imputation needs one kept pixel per image at least")
    # One system per image and channel, each a channel of one image: (1, S, H, W), S = N * C,
    # stored channels-last: the shifts and the sums over pixels then run over contiguous
    # systems (several times faster on the CPU than one image per system).
    mask = removed.to(inputs.dtype).repeat_interleave(channels, 0)[None]
    mask = mask.contiguous(memory_format=torch.channels_last)
    values = inputs.reshape(1, -1, height, width).contiguous(memory_format=torch.channels_last)
    right = mask * neighbour_sum((1 - mask) * values)  # b: the kept neighbours' weighted sum
    levels = multigrid_levels(mask)

    def dot(a, b):
        return (a * b).sum((-2, -1), keepdim=True)  # (1, S, 1, 1)

    def keep(tensor, systems):
        return tensor[:, systems].contiguous(memory_format=torch.channels_last)

    solution = torch.zeros_like(values)
    left = torch.arange(values.shape[1], device=inputs.device)  # the systems not yet solved
    x, residual, direction = torch.zeros_like(values), right.clone(), torch.zeros_like(values)
    squared = dot(residual, residual)
    enough = tolerance ** 2 * squared
    rz = torch.ones_like(squared)  # r.z (z = B r) of the step before; any, as direction = 0
    for step in range(max_iterations + 1):
        done = (squared <= enough).flatten()
        if done.any():  # solved systems leave (a sync on a GPU): the rest run on fewer
            solution[:, left[done]] = x[:, done]
            left, unsolved = left[~done], ~done
            x, residual, direction, squared, enough, rz = (
                keep(t, unsolved) for t in (x, residual, direction, squared, enough, rz))
            levels = [(keep(level_mask, unsolved), degree) for level_mask, degree in levels]
        if not len(left) or step == max_iterations:
            break
        preconditioned = v_cycle(levels, residual)  # z = B r
        new_rz = dot(residual, preconditioned)
        direction = preconditioned.addcmul_(new_rz / rz, direction)
        rz = new_rz
        product = imputation_matrix_times(direction, *levels[0])
        length = rz / dot(direction, product)
        x.addcmul_(length, direction)
        residual.addcmul_(length, product, value=-1)
        squared = dot(residual, residual)
    solution[:, left] = x
    return torch.where(mask.bool(), solution, values).reshape(count, channels, height, width)


def multigrid_levels(mask):
    """The grids of :func:`v_cycle`, fine to coarse: [(mask, degree)], each side halved
    (rounded up) until one is ``COARSEST_SIDE`` or less.

    A coarse pixel stands for 2 x 2 fine ones (fewer at an odd border) and is removed, an
    unknown, when all of them are; one with a kept fine pixel is kept, its correction zero,
    as the kept pixels' is on the fine grid. ``degree`` (1, 1, h, w) renormalizes the border
    on each grid as on the fine one.
    """
    levels = []
    while True:
        levels.append((mask, neighbour_sum(torch.ones_like(mask[:, :1]))))
        if min(mask.shape[-2:]) <= COARSEST_SIDE:
            return levels
        mask = -F.max_pool2d(-mask, 2, ceil_mode=True)  # (1, S, ceil(h / 2), ceil(w / 2))


def v_cycle(levels, residual, depth=0):
    """One multigrid V-cycle for A e = ``residual`` from e = 0: the preconditioner of
    :func:`linear_imputation`, (1, S, h, w) -> same, zero outside the removed pixels.

    ``SMOOTHING_STEPS`` Jacobi steps (:func:`jacobi_step`; weight 1, which damps the 9-point
    stencil's high frequencies, where D^-1 A lies in [2/3, 4/3], by 3 at least), the residual
    restricted to the next grid (:func:`restrict`, the transpose of :func:`interpolate`), its
    V-cycle there, interpolated back and added, then as many Jacobi steps again. The coarse
    equations are the same stencil on the coarse grid, unscaled: restriction's weights add up
    to 4 per coarse pixel, and the stencil on a grid twice as coarse is 4 times the fine one
    for smooth errors (A ~ -Delta / 3 in pixel units). With as many steps after as before,
    restriction the transpose of interpolation and each grid's Jacobi steps convergent (the
    eigenvalues of D^-1 A below 2 when a pixel is kept), the cycle is a symmetric positive
    definite matrix, as conjugate gradients need (Tatebe 1993).
    """
    mask, degree = levels[depth]
    x = residual / degree  # the first Jacobi step, from zero
    for _ in range(SMOOTHING_STEPS - 1):
        x = jacobi_step(x, residual, mask, degree)
    if depth + 1 < len(levels):
        coarse = restrict(residual - imputation_matrix_times(x, mask, degree))
        correction = v_cycle(levels, coarse.mul_(levels[depth + 1][0]), depth + 1)
        x.addcmul_(interpolate(correction, mask.shape[-2:]), mask)
    for _ in range(SMOOTHING_STEPS):
        x = jacobi_step(x, residual, mask, degree)
    return x


def jacobi_step(x, right, mask, degree):
    """x_i <- (b_i + sum_j w_ij x_j) / d_i on the removed pixels i (``right`` = b, zero
    elsewhere), zero elsewhere: (1, S, h, w) -> same."""
    return neighbour_sum(x).mul_(mask).add_(right).div_(degree)


def along(tensor, dim, index):
    """``tensor[..., index, :]`` (dim -2) or ``tensor[..., index]`` (dim -1): a view."""
    return tensor[(Ellipsis, index) + (slice(None),) * (-1 - dim)]


def interpolate(coarse, size):
    """Bilinear interpolation from a grid of pixels 2 x 2 as large (pixel centres, values
    beyond the border those at it, as ``F.interpolate(..., align_corners=False)``):
    (1, S, h, w) -> (1, S, *size), size = (H, W) with h = ceil(H / 2), w = ceil(W / 2). By
    shifted adds along each axis: a fine pixel is 3/4 of its coarse pixel and 1/4 of the
    next one on its side."""
    for dim, length in zip((-2, -1), size):
        steps = coarse.shape[dim]
        even, odd = coarse * 0.75, coarse * 0.75  # fine pixels 2k and 2k + 1
        along(even, dim, slice(1, None)).add_(along(coarse, dim, slice(0, steps - 1)),
                                              alpha=0.25)
        along(even, dim, slice(0, 1)).add_(along(coarse, dim, slice(0, 1)), alpha=0.25)
        along(odd, dim, slice(0, steps - 1)).add_(along(coarse, dim, slice(1, None)),
                                                  alpha=0.25)
        along(odd, dim, slice(steps - 1, None)).add_(along(coarse, dim, slice(steps - 1, None)),
                                                     alpha=0.25)
        shape = list(coarse.shape)
        shape[dim] = length
        fine = torch.empty(shape, dtype=coarse.dtype, device=coarse.device,
                           memory_format=torch.channels_last)
        along(fine, dim, slice(0, None, 2)).copy_(even)
        along(fine, dim, slice(1, None, 2)).copy_(along(odd, dim, slice(0, length // 2)))
        coarse = fine
    return coarse


def restrict(fine):
    """The transpose of :func:`interpolate`: each fine value handed back to the coarse
    pixels it is interpolated from, with the same weights. (1, S, H, W) -> (1, S,
    ceil(H / 2), ceil(W / 2))."""
    for dim in (-2, -1):
        even, odd = along(fine, dim, slice(0, None, 2)), along(fine, dim, slice(1, None, 2))
        steps, odds = even.shape[dim], odd.shape[dim]  # odds = steps - 1 at an odd size
        coarse = even * 0.75
        along(coarse, dim, slice(0, odds)).add_(odd, alpha=0.75)
        along(coarse, dim, slice(0, steps - 1)).add_(along(even, dim, slice(1, None)),
                                                     alpha=0.25)
        along(coarse, dim, slice(1, None)).add_(along(odd, dim, slice(0, steps - 1)),
                                                alpha=0.25)
        along(coarse, dim, slice(0, 1)).add_(along(even, dim, slice(0, 1)), alpha=0.25)
        if odds == steps:  # the last fine pixel's share beyond the border
            along(coarse, dim, slice(steps - 1, None)).add_(
                along(odd, dim, slice(steps - 1, None)), alpha=0.25)
        fine = coarse
    return fine


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
