"""Redraw the README's figures: ``python docs/make_figures.py`` writes docs/*.png."""
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data.datasets import load_dataset  # noqa: E402
from model.figures.plotting import save_figure  # noqa: E402


def plot_shapes_preview(dataset, count=8):
    """Two rows per sample block: images with their class, then the ground-truth masks."""
    figure = Figure(figsize=(count * 1.3, 3.0))
    axes = figure.subplots(2, count)
    for column in range(count):
        image = dataset.images[column].permute(1, 2, 0).numpy()
        axes[0, column].imshow(image)
        axes[0, column].set_title(dataset.info.classes[dataset.labels[column]], fontsize=9)
        axes[1, column].imshow(image)
        axes[1, column].contour(dataset.masks[column].numpy(), levels=[0.5], colors="white",
                                linewidths=1.2)
        axes[1, column].imshow(dataset.masks[column].numpy(), cmap="gray", alpha=0.45)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("object mask", fontsize=9)
    figure.suptitle("shapes: built-in offline dataset, 6 classes, ground-truth masks")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    output = Path(__file__).resolve().parent / "shapes.png"
    save_figure(plot_shapes_preview(load_dataset("shapes", "test")), output)
    print(f"wrote {output}")
