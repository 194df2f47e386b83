"""Measures of whether an explanation points at the object (needs ground-truth masks)."""
import torch.nn.functional as F

EPSILON = 1e-12


def dilate(masks, pixels=1):
    """Grow (N, H, W) boolean masks by ``pixels`` in every direction (a square neighbourhood)."""
    size = 2 * pixels + 1
    return F.max_pool2d(masks[:, None].float(), size, stride=1, padding=pixels)[:, 0] > 0


def pointing_hits(maps, masks, dilation=1):
    """Pointing game (Zhang et al. 2016, sec. 5.1): is each map's maximum inside its mask?

    Args:
        maps: (N, H, W); masks: (N, H, W) bool, dilated by ``dilation`` pixels first.
    Returns:
        (N,) bool.
    """
    grown = dilate(masks, dilation).flatten(1)
    return grown.gather(1, maps.flatten(1).argmax(1, keepdim=True))[:, 0]


def mass_inside(maps, masks, dilation=1):
    """Share of each map's mass that lies inside its (dilated) mask.

    The energy-based pointing game (Wang et al. 2020, Score-CAM sec. 5.2): sum of the map over
    the mask divided by its sum over the image. Maps are shifted to a minimum of 0 first, so a
    constant map scores 0 and a uniform random map scores about the mask's area share.

    Args:
        maps: (N, H, W); masks: (N, H, W) bool.
    Returns:
        (N,) in [0, 1].
    """
    flat = maps.flatten(1).float()
    flat = flat - flat.min(1, keepdim=True).values
    inside = (flat * dilate(masks, dilation).flatten(1)).sum(1)
    return inside / (flat.sum(1) + EPSILON)
