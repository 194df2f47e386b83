"""Map maths shared by every method, the evaluation and the report: min-max normalization,
resizing to the input, and averaging down to the side the explorer stores."""
import torch
import torch.nn.functional as F

EPSILON = 1e-8


def _as_float(maps):
    """float32, or float64 when the maps already are (bool, integer and half maps: float32)."""
    return maps.to(torch.promote_types(maps.dtype, torch.float32))


def normalize_maps(maps):
    """Min-max normalize each map of a batch to [0, 1]; a constant map becomes all zeros.

    Args:
        maps: (N, ...) any number of trailing dimensions.
    Returns:
        same shape, float32 (float64 for float64 maps), finite, in [0, 1] (NaN and Inf
        inputs are treated as 0).
    """
    maps = torch.nan_to_num(_as_float(maps), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    return ((flat - low) / (span + EPSILON)).clamp(0.0, 1.0).view_as(maps)


def resize_maps(maps, size, mode="bilinear"):
    """Resize (N, h, w) maps to (N, size, size); ``mode`` is ``bilinear`` or ``nearest``."""
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(_as_float(maps)[:, None], size=(size, size), mode=mode, **extra)[:, 0]


# Images and maps are stored at most this many pixels a side (the page shows them 192 px
# wide): a 224 px map is 49 KB, and the ~2,500 maps of 16 images would make 170 MB.
MAX_SIDE = 112


def stored_side(side):
    """The side, in pixels, images and maps of ``side`` px are stored at."""
    return min(side, MAX_SIDE)


def shrink(values, side):
    """(N, C, H, W) float values averaged down to ``side`` x ``side`` (unchanged if smaller
    already): area averaging keeps a map's mass where it was."""
    if values.shape[-1] <= side:
        return values
    return F.interpolate(values, size=(side, side), mode="area")
