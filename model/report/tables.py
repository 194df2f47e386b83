"""The evaluation's method x metric table: its columns, how to read each, its cells, and the
same table as Markdown (for the terminal) and as rows for the report page."""


# Table columns: (metric key, heading, how to read it)
COLUMNS = (
    ("deletion_auc", "deletion AUC", "lower is better"),
    ("insertion_auc", "insertion AUC", "higher is better"),
    ("road_morf", "ROAD MoRF", "lower is better"),
    ("road_lerf", "ROAD LeRF", "higher is better"),
    ("average_drop", "average drop %", "lower is better"),
    ("increase_in_confidence", "increase in confidence %", "higher is better"),
    ("pointing", "pointing game", "higher is better"),
    ("mass_inside", "mass in object", "higher is better"),
    ("randomized_top_layer", "rank corr., top layer random", "lower is better"),
    ("randomized_all_layers", "rank corr., all layers random", "lower is better"),
    ("forward_passes_per_image", "forward / image", "cost"),
    ("backward_passes_per_image", "backward / image", "cost"),
    ("ms_per_image", "ms / image", "cost"),
    ("peak_memory_mib", "peak MiB", "cost"),
)


def _present_columns(scores):
    return [c for c in COLUMNS if any(c[0] in values for values in scores.values())]


def table_rows(methods, scores):
    """The table as (headings, rows of strings); columns no method has are left out.

    Args:
        scores: method -> {metric: value}, as in :class:`Evaluation` or evaluation.json.
    """
    columns = _present_columns(scores)
    headings = ["method"] + [heading for _, heading, _ in columns]
    rows = [[method] + [format_value(key, scores[method].get(key)) for key, _, _ in columns]
            for method in methods]
    return headings, rows


def column_readings(scores):
    """How to read each column of :func:`table_rows` (lower / higher is better, cost)."""
    return [reading for _, _, reading in _present_columns(scores)]


def format_value(key, value):
    """A table cell: pass counts as integers where whole, percentages, times and memory with
    one decimal, scores with three."""
    if value is None:
        return "-"
    if key in ("forward_passes_per_image", "backward_passes_per_image"):
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    if key in ("ms_per_image", "peak_memory_mib", "average_drop", "increase_in_confidence"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def markdown_table(methods, scores):
    """The table as Markdown, for the terminal and the docs."""
    headings, rows = table_rows(methods, scores)
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_cost_text(costs):
    """What the metrics cost, in one line: forward passes and milliseconds per image and
    method (``metric_costs`` of evaluation.json: metric -> ``Cost.per_image``)."""
    return "; ".join(f"{metric.replace('_', ' ')} {cost['forward_passes_per_image']:.0f} "
                     f"forward passes, {cost['ms_per_image']:.1f} ms"
                     for metric, cost in costs.items())
