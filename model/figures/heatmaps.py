"""Drawing maps: colour maps, overlays on the image, signed display, mosaics and the grids
the method scripts save (the arithmetic is in ``model.attribution.maps``)."""
import numpy as np
import torch

from model.figures.plotting import Figure, matplotlib

HEATMAP_CMAP = "inferno"  # perceptually uniform: equal steps of value look like equal steps

DIVERGING_CMAP = "RdBu_r"


def signed_display(values, quantile=None):
    """Signed values (a projection, conv weights) for display as the Zeiler-Fergus figures
    show them: zero is mid-gray, scaled by the largest magnitude, or with ``quantile`` by that
    quantile of the non-zero magnitudes (the larger ones saturate; a projection is zero
    outside its receptive field).

    Any shape -> the same shape in [0, 1]; all zeros stay uniformly gray.
    """
    magnitude = values.abs()
    nonzero = magnitude[magnitude > 0].float()
    scale = (magnitude.max() if quantile is None or not len(nonzero)
             else torch.quantile(nonzero[:2**24 - 1], quantile).to(values.dtype))
    return (0.5 + 0.5 * values / scale.clamp_min(1e-12)).clamp(0.0, 1.0)


def colour_table(name):
    """A matplotlib colour map as 256 [r, g, b] rows of 0..255 integers (for a web page)."""
    table = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
    return (table * 255).round().astype(int).tolist()


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


def grid_mosaic(cells, gap=1, label_gap=0):
    """Lay (R, C, h, w) cells out as one 2-D array, NaN between them (drawn as white).

    Each cell is preceded by ``gap`` columns on its left and ``gap + label_gap`` rows above it
    (room for a label); one image instead of R x C subplots keeps drawing fast for 64 x 64
    kernels or maps.
    """
    rows, columns, height, width = cells.shape
    top = gap + label_gap
    mosaic = torch.full((rows * (height + top) + gap, columns * (width + gap) + gap),
                        float("nan"))
    slots = mosaic[:rows * (height + top), :columns * (width + gap)]
    slots = slots.unfold(0, height + top, height + top).unfold(1, width + gap, width + gap)
    slots[:, :, top:, gap:] = cells  # slots is a view into the mosaic
    return mosaic


def cell_centers(index, size, step, offset):
    """Mosaic coordinates of the centres of cells ``index`` of ``size`` pixels, ``step`` apart."""
    return [offset + i * step + (size - 1) / 2 for i in index]


def show_mosaic(axis, mosaic, cmap, vmin, vmax):
    """Draw a mosaic with its NaN gaps in white, pixels as blocks; returns the artist."""
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="white")
    return axis.imshow(mosaic.numpy(), cmap=colormap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")


def plot_map_table(image, maps, row_labels, column_labels, title, cell=1.1):
    """The input beside a table of (R, C, h, w) maps in [0, 1], rows and columns labelled.

    One mosaic image rather than R x C subplots, so that a 16 x 10 table draws in a blink.
    """
    rows, columns, height, width = maps.shape
    figure = Figure(figsize=(cell * (columns + 1) + 1.0, cell * rows + 0.9))
    image_axis, maps_axis = figure.subplots(1, 2, width_ratios=[1, columns])
    show_image(image_axis, image, "input")
    image_axis.set_anchor("N")  # beside the first row, not floating mid-height
    maps_axis.set_anchor("NW")  # the row labels next to their maps
    show_mosaic(maps_axis, grid_mosaic(maps), HEATMAP_CMAP, 0.0, 1.0)
    maps_axis.set_xticks(cell_centers(range(columns), width, width + 1, 1), column_labels,
                         fontsize=8)
    maps_axis.xaxis.tick_top()
    maps_axis.set_yticks(cell_centers(range(rows), height, height + 1, 1), row_labels,
                         fontsize=8)
    maps_axis.tick_params(length=0)
    for side in maps_axis.spines.values():
        side.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_overlay_grid(images, maps, row_titles, colorbar_label="map (0-1)"):
    """A row per image: the input, then one overlay per method (``maps``: name -> (N, H, W)),
    with one colorbar: the CAM grid and the evaluation's map figure."""
    count, columns = len(images), 1 + len(maps)
    figure = Figure(figsize=(1.9 * columns + 0.8, 2.4 * count + 0.4))
    axes = figure.subplots(count, columns, squeeze=False)
    artist = None
    for row in range(count):
        show_image(axes[row, 0], images[row], row_titles[row])
        for column, (method, method_maps) in enumerate(maps.items(), start=1):
            artist = show_overlay(axes[row, column], images[row], method_maps[row],
                                  method if row == 0 else None)
    figure.colorbar(artist, ax=axes, fraction=0.02, pad=0.01, label=colorbar_label)
    return figure
