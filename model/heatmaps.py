"""Heatmap arithmetic and drawing shared by every method: normalization, resizing, overlays."""
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

EPSILON = 1e-8
HEATMAP_CMAP = "inferno"  # perceptually uniform: equal steps of value look like equal steps
DIVERGING_CMAP = "RdBu_r"


def normalize_maps(maps):
    """Min-max normalize each map of a batch to [0, 1]; a constant map becomes all zeros.

    Args:
        maps: (N, ...) any number of trailing dimensions.
    Returns:
        same shape, finite, in [0, 1] (NaN and Inf inputs are treated as 0).
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    return ((flat - low) / (span + EPSILON)).clamp(0.0, 1.0).view_as(maps)


def resize_maps(maps, size, mode="bilinear"):
    """Resize (N, h, w) maps to (N, size, size); ``mode`` is ``bilinear`` or ``nearest``."""
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[:, None].float(), size=(size, size), mode=mode, **extra)[:, 0]


def to_display(image):
    """A (C, H, W) image in [0, 1] as an array matplotlib shows: (H, W, 3) or (H, W)."""
    array = image.detach().cpu().numpy()
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


def show_image(axis, image, title=None):
    """Draw a (C, H, W) image in [0, 1] without ticks."""
    array = to_display(image)
    axis.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0.0, vmax=1.0)
    frame(axis, title)


def show_overlay(axis, image, heatmap, title=None, alpha=0.55, cmap=HEATMAP_CMAP, vmin=0.0,
                 vmax=1.0):
    """Draw a heatmap over a grayscale copy of the image and return the heatmap's artist.

    The image is shown in gray so that the heatmap's colours are never confused with the
    image's own; pass the artist to ``figure.colorbar``.
    """
    gray = to_display(image)
    if gray.ndim == 3:
        gray = gray @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
    axis.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0)
    artist = axis.imshow(heatmap.detach().cpu().numpy(), cmap=cmap, alpha=alpha, vmin=vmin,
                         vmax=vmax)
    frame(axis, title)
    return artist


def frame(axis, title=None):
    """Remove an image axis's ticks and set a small title."""
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=9)


def class_colormap(num_classes):
    """A qualitative colormap with one distinct colour per class (tab10, or tab20 for more)."""
    base = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
    return matplotlib.colors.ListedColormap([base(index) for index in range(num_classes)])
