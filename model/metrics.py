"""Measures of whether an explanation points at the object (needs ground-truth masks)."""
import torch.nn.functional as F


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
