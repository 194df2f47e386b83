"""The evaluation's figures (``model.evaluation.scoring.Evaluation`` in, figures out): the
deletion / insertion and ROAD curves, the randomization curves and maps, the agreement
heatmap and the methods' maps of a few images."""
import torch

from model.attribution.registry import BASELINE
from model.figures.heatmaps import DIVERGING_CMAP, plot_map_table, plot_overlay_grid
from model.figures.plotting import Figure, matplotlib


def line_style(methods, method):
    """A distinct colour and line style per method; the random baseline black and dashed."""
    if method == BASELINE:
        return {"color": "black", "linestyle": "--"}
    index = [m for m in methods if m != BASELINE].index(method)
    # Ten colours; past ten methods the colours repeat with another line style.
    return {"color": matplotlib.colormaps["tab10"](index % 10),
            "linestyle": ("-", "-.", ":")[index // 10 % 3]}


def plot_curves(evaluation):
    """Mean deletion and insertion curves per method, the AUC in the legend (RISE Fig. 4)."""
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    for axis, mode, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for method in evaluation.methods:
            curve = evaluation.curves[method][mode].mean(0)
            fraction = torch.linspace(0, 1, len(curve))
            # the AUC of the mean curve is the mean of the images' AUCs: the table's number
            auc = evaluation.scores[method][f"{mode}_auc"]
            axis.plot(fraction, curve, label=f"{method} ({auc:.3f})",
                      **line_style(evaluation.methods, method))
        action = "deleted" if mode == "deletion" else "inserted"
        axis.set(xlabel=f"fraction of pixels {action}, most important first",
                 ylabel="mean p(target)", ylim=(0, 1.02),
                 title=f"{mode} (AUC in brackets, {better} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


ORDER_NAMES = {"morf": "MoRF", "lerf": "LeRF"}  # as the ROAD paper writes them


def plot_road(evaluation):
    """Mean ROAD curves per method, MoRF and LeRF, the mean in the legend (as Rong et al. 2022
    plot them, with p(target) for accuracy)."""
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    for axis, order, better in zip(axes, ORDER_NAMES, ("lower", "higher")):
        for method in evaluation.methods:
            curve = evaluation.curves[method][f"road_{order}"].mean(0)
            axis.plot(evaluation.road_percentages, curve, marker="o", markersize=3,
                      label=f"{method} ({curve.mean():.3f})",
                      **line_style(evaluation.methods, method))
        first = "most" if order == "morf" else "least"
        axis.set(xlabel=f"% of pixels removed, {first} important first (noisy linear "
                        "imputation)", ylabel="mean p(target)", ylim=(0, 1.02),
                 title=f"ROAD {ORDER_NAMES[order]} (mean in brackets, {better} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_randomization(evaluation):
    """Rank correlation with the original map as layers are randomized (Adebayo Fig. 2)."""
    figure = Figure(figsize=(8, 4.2))
    axis = figure.subplots()
    labels = ["original"] + evaluation.stages
    for method in evaluation.methods:
        axis.plot(range(len(labels)), [1.0] + evaluation.randomization[method],
                  marker="o", label=method, markersize=3,
                  **line_style(evaluation.methods, method))
    # a net's block names (features.6.2, trunk_output.block4) overlap side by side: slanted
    slanted = sum(map(len, labels)) > 60
    axis.set_xticks(range(len(labels)), labels, rotation=40 if slanted else 0,
                    ha="right" if slanted else "center", fontsize=8 if slanted else None)
    axis.set(xlabel="randomized down to layer (cumulative, top first)",
             ylabel="Spearman rank correlation", ylim=(-0.3, 1.05),
             title="model randomization: a faithful map decorrelates")
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def plot_randomization_maps(image, evaluation, index, title):
    """Image ``index``'s map by each method as the layers are randomized (Adebayo Fig. 2)."""
    maps = torch.stack([evaluation.cascade[method][index] for method in evaluation.methods])
    return plot_map_table(image, maps, evaluation.methods, ["original"] + evaluation.stages,
                          f"{title}: maps as the weights are randomized, top layer first")


def plot_agreement(evaluation):
    """The methods' mean rank correlation as a heatmap with the value in each cell."""
    count = len(evaluation.methods)
    figure = Figure(figsize=(0.6 * count + 2.5, 0.6 * count + 1.5))
    axis = figure.subplots()
    artist = axis.imshow(evaluation.agreement.numpy(), cmap=DIVERGING_CMAP, vmin=-1, vmax=1)
    axis.set_xticks(range(count), evaluation.methods, rotation=60, ha="right")
    axis.set_yticks(range(count), evaluation.methods)
    for row in range(count):
        for column in range(count):
            value = float(evaluation.agreement[row, column])
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if abs(value) > 0.6 else "black")
    figure.colorbar(artist, ax=axis, fraction=0.046, pad=0.04, label="Spearman")
    axis.set_title("agreement between methods (mean rank correlation)")
    figure.tight_layout()
    return figure


def plot_maps(images, evaluation, titles, rows):
    """Every method's map of the evaluated images ``rows`` (indices into the batch)."""
    maps = {method: evaluation.maps[method][rows] for method in evaluation.methods}
    return plot_overlay_grid(images[rows], maps, [titles[row] for row in rows])


