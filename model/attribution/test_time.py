"""Test-time augmentation of a map (``aug_smooth``): the mean map over flipped and rescaled
copies of each image, every copy's map brought back to the image's frame first.

pytorch-grad-cam's ``aug_smooth`` averages over horizontal flips times brightness factors
(0.9, 1, 1.1); here the copies are geometric, as the map must follow the image: horizontal
flips times zooms by :data:`SCALES` about the centre, the same size in pixels. A zoom-in crops
the border, a zoom-out fills it with zeros, which for normalized inputs is the dataset's mean
colour. Each copy's map is warped back by the inverse transform; a pixel's mean is taken
over the copies that saw it (bilinear coverage), so a zoom-in's cropped border counts for
nothing there.
"""
import torch
import torch.nn.functional as F

FLIPS = (False, True)
SCALES = (1.0, 0.9, 1.1)  # zoom factors: > 1 enlarges the content


def view_transforms(flips=FLIPS, scales=SCALES):
    """The copies' affine transforms in ``F.affine_grid``'s convention (output position p
    samples the input at theta p, coordinates in [-1, 1]): (V, 2, 3) forward, the copies
    from the image, and (V, 2, 3) inverse, the image's frame from a copy; every flip with
    every scale, the identity first."""
    forward, inverse = [], []
    for flip in flips:
        sign = -1.0 if flip else 1.0
        for scale in scales:
            forward.append([[sign / scale, 0.0, 0.0], [0.0, 1.0 / scale, 0.0]])
            inverse.append([[sign * scale, 0.0, 0.0], [0.0, scale, 0.0]])
    return torch.tensor(forward), torch.tensor(inverse)


def warp(values, theta):
    """(B, C, H, W) values resampled through (B, 2, 3) transforms, bilinear, zeros outside."""
    grid = F.affine_grid(theta.to(values), list(values.shape), align_corners=False)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def test_time_augmented(map_function, inputs, targets, flips=FLIPS, scales=SCALES):
    """The mean of ``map_function`` over transformed copies of the images, each map warped
    back to the image before averaging.

    Args:
        map_function: (images (B, C, H, W), targets (B,) or (B, T)) -> maps (B, H, W) or
            (B, T, H, W) at input resolution, not normalized.
        inputs: (N, C, H, W) normalized images; targets: (N,) or (N, T).
    Returns:
        (N, H, W) or (N, T, H, W): per pixel, the mean over the copies that cover it.
    """
    forward, inverse = view_transforms(flips, scales)
    views, count = len(forward), len(inputs)
    copies = warp(inputs.repeat(views, 1, 1, 1), forward.repeat_interleave(count, 0))
    maps = map_function(copies, targets.repeat(views, *[1] * (targets.dim() - 1)))
    per_image = maps.shape[1:-2]  # () or (T,)
    flat = maps.reshape(views * count, -1, *maps.shape[-2:])  # (V * N, T or 1, H, W)
    back_transforms = inverse.repeat_interleave(count, 0)
    back = warp(flat, back_transforms).view(views, count, *flat.shape[1:])
    coverage = warp(torch.ones_like(flat[:, :1]), back_transforms).view(
        views, count, 1, *flat.shape[2:])
    mean = back.sum(0) / coverage.sum(0).clamp_min(1e-6)  # the identity covers every pixel
    return mean.view(count, *per_image, *maps.shape[-2:])
