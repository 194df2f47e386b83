"""Incremental occlusion: recompute only what a patch changes (Krypton: Nakandala, Kumar and
Papakonstantinou, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations", SIGMOD 2019).

An occluding patch changes a small box of the input. A convolution or pooling with kernel k,
stride s, padding p and dilation d changes output o only if its window o*s - p + d*[0, k) meets
a changed input, so the changed rows [a, b) of its input give changed output rows
[ceil((a + p - d(k-1)) / s), floor((b - 1 + p) / s)] (Krypton, sec. 3.2, Eq. 3-4); a pointwise
layer (BatchNorm in eval mode, ReLU) keeps the box, an addition or concatenation takes the
union of its inputs' boxes. The network is traced once with ``torch.fx``; the unoccluded image's
activations are kept for every layer, and for a batch of patch positions each layer computes
only its changed box, reading the context around it from the kept activations. Where the box
covers the whole map, or at a layer this does not know (then said once on stderr), the rest of
the network runs on whole maps. The result is the same logits as running every occluded image.

Approximate mode (Krypton sec. 4.1, projective-field thresholding): the influence of a changed
input falls off towards the edge of its projective field, so the changed box of a conv or pool
output is cut to at most ``tau`` times the map's side, centred on the exact box; values outside
it keep the unoccluded image's activations.
"""
import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from model.errors import one_line
from model.nets.anatomy import anatomy
from model.nets.graph_split import LayerTracer
from model.runtime.notes import note

POINTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity,
                     nn.Dropout, nn.Sigmoid, nn.SiLU, nn.Hardswish, nn.GELU, nn.Tanh)

POINTWISE_FUNCTIONS = (operator.add, operator.mul, torch.add, torch.mul, torch.relu, F.relu)

CONCATENATIONS = (torch.cat,)

GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)  # the expected end of the boxes

# Traced as module calls (``model.nets.graph_split.LayerTracer``), subclasses defined outside
# torch.nn too (the whitening stem), so that each one's window is read from its module.
LEAVES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d) + GLOBAL_POOLS + POINTWISE_MODULES

DEFAULT_MAX_MEMORY_MB = 1024


@dataclass
class Box:
    """The changed region of one layer's output for every patch position.

    Attributes:
        height, width: the box's size, the same for all positions (the largest changed extent),
            so a batch of positions computes one tensor (B, C, height, width).
        tops, lefts: (P,) where each position's box starts in the map.
        rows, columns: (P, 2) the exact changed interval [start, end) per position (the box
            contains it; recomputed values outside it equal the kept ones).
        full: the box covers the whole map: from here on the layer runs on whole maps.
    """

    height: int
    width: int
    tops: torch.Tensor
    lefts: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor
    full: bool


@dataclass
class BoxValue:
    """A batch of positions' recomputed box of one layer: ``values`` (B, C, h, w) starting at
    (``tops``, ``lefts``) (B,) of the map."""

    values: torch.Tensor
    tops: torch.Tensor
    lefts: torch.Tensor


def torch_forward(module):
    """Whether ``module`` computes what its torch.nn class does: its forward is torch.nn's
    own and no hook changes it (a subclass's forward, e.g. a weight-standardized conv, may
    not be a crop-able window or pointwise function)."""
    return (type(module).forward.__module__.startswith("torch.nn.")
            and not module._forward_hooks and not module._forward_pre_hooks)


def window_of(module):
    """(kernel, stride, padding, dilation, pad value) per axis of a conv or pool layer, or None
    for a layer whose output is not a window function of its input here."""
    pair = torch.nn.modules.utils._pair
    if not torch_forward(module):
        return None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return (pair(module.kernel_size), pair(module.stride), pair(module.padding),
                pair(module.dilation), 0.0)
    if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
        return (pair(module.kernel_size), pair(module.stride or module.kernel_size),
                pair(module.padding), pair(module.dilation), -math.inf)
    if (isinstance(module, nn.AvgPool2d) and not module.ceil_mode
            and (module.count_include_pad or module.padding == 0)):
        return (pair(module.kernel_size), pair(module.stride or module.kernel_size),
                pair(module.padding), (1, 1), 0.0)
    return None


def changed_interval(start, end, kernel, stride, padding, dilation, size):
    """Output indices [first, last + 1) whose window meets changed inputs [start, end)
    (Krypton Eq. 3-4), clipped to an output of ``size``; tensors of positions."""
    reach = dilation * (kernel - 1)
    first = torch.div(start + padding - reach + stride - 1, stride, rounding_mode="floor")
    last = torch.div(end - 1 + padding, stride, rounding_mode="floor")
    first = first.clamp(0, size - 1)
    # A change that falls between two strided windows changes nothing; keep one entry so
    # every box has a size.
    return first, torch.maximum(last.clamp(0, size - 1), first) + 1


def threshold(interval, size, tau):
    """Krypton's projective-field threshold: at most ceil(tau * size) entries, centred on the
    exact interval (P, 2)."""
    limit = max(1, math.ceil(tau * size))
    start, end = interval.unbind(1)
    centre = (start + end) / 2
    cut_start = (centre - limit / 2).round().long().clamp(0, max(size - limit, 0))
    keep = (end - start) <= limit
    return torch.where(keep[:, None], interval,
                       torch.stack([cut_start, cut_start + limit], 1))


def box_from(rows, columns, height, width):
    """The :class:`Box` of a map (height, width) that holds every position's interval."""
    box_height = int((rows[:, 1] - rows[:, 0]).max())
    box_width = int((columns[:, 1] - columns[:, 0]).max())
    tops = torch.minimum(rows[:, 0], torch.tensor(height - box_height))
    lefts = torch.minimum(columns[:, 0], torch.tensor(width - box_width))
    full = box_height == height and box_width == width
    return Box(box_height, box_width, tops, lefts, rows, columns, full)


def crop(maps, tops, lefts, height, width):
    """(B, C, height, width), stored channels-last: the window at (tops[b], lefts[b]) of
    ``maps`` (H, W, C) for each b, as one index_select of whole pixels. Channels-last because
    the CPU convolutions run faster on it (``model.runtime.device.fast_layout``) and a pixel's
    channels are then one contiguous row to copy."""
    map_width, channels = maps.shape[1:]
    rows = tops[:, None] + torch.arange(height, device=tops.device)  # (B, height)
    columns = lefts[:, None] + torch.arange(width, device=tops.device)  # (B, width)
    index = (rows[:, :, None] * map_width + columns[:, None, :]).flatten()
    picked = maps.reshape(-1, channels).index_select(0, index)  # (B * height * width, C)
    return picked.view(len(tops), height, width, channels).permute(0, 3, 1, 2)


def overlay(region, tops, lefts, values, value_tops, value_lefts):
    """``region`` (B, C, h, w) whose window starts at (tops, lefts) of a map, with the part that
    ``values`` (B, C, hv, wv), starting at (value_tops, value_lefts), covers replaced by it;
    channels-last."""
    count, channels, height, width = region.shape
    value_height, value_width = values.shape[-2:]
    rows = tops[:, None] + torch.arange(height, device=tops.device) - value_tops[:, None]
    columns = lefts[:, None] + torch.arange(width, device=tops.device) - value_lefts[:, None]
    inside = (((rows >= 0) & (rows < value_height))[:, :, None]
              & ((columns >= 0) & (columns < value_width))[:, None, :])  # (B, h, w)
    index = (rows.clamp(0, value_height - 1)[:, :, None] * value_width
             + columns.clamp(0, value_width - 1)[:, None, :]).flatten(1)  # (B, h * w)
    pixels = values.permute(0, 2, 3, 1).reshape(count, -1, channels)  # (B, hv * wv, C)
    picked = pixels.gather(1, index[:, :, None].expand(-1, -1, channels))  # (B, h * w, C)
    merged = torch.where(inside.view(count, -1, 1), picked,
                         region.permute(0, 2, 3, 1).reshape(count, -1, channels))
    return merged.view(count, height, width, channels).permute(0, 3, 1, 2)


class IncrementalOcclusion:
    """The logits of occluded images, computing only the changed box of every layer.

    Built once per model, image size and patch grid: traces the model (``torch.fx``), runs
    one example to learn every layer's output shape, and works out each layer's changed
    :class:`Box` for every patch position. Then :meth:`keep` runs the unoccluded image once
    and :meth:`logits` gives the logits for a batch of positions.

    Args:
        model: the network in eval mode.
        example: (1, C, H, W) an input of the size to explain.
        patch: square side in pixels.
        tops, lefts: (ny,), (nx,) the patch positions' pixel coordinates.
        tau: None for exact; in (0, 1] for Krypton's projective-field threshold.
    """

    def __init__(self, model, example, patch, tops, lefts, tau=None):
        self.graph_module = fx.GraphModule(model, LayerTracer(LEAVES).trace(model))
        self.modules = dict(self.graph_module.named_modules())
        self.nodes = list(self.graph_module.graph.nodes)
        self.tau = tau
        self.fallbacks = []
        shapes = {node: getattr(value, "shape", None)
                  for node, value in self._run_whole(example).items()}
        grid_tops = tops.repeat_interleave(len(lefts))  # (P,): positions row by row
        grid_lefts = lefts.repeat(len(tops))
        self.positions = len(grid_tops)
        self.boxes, self.changed = {}, set(self.nodes[:1])
        for node in self.nodes:
            self.boxes[node] = self._box(node, shapes, grid_tops, grid_lefts, patch)
        self.shapes = shapes
        self.last_use = {}
        for node in self.nodes:
            for used in node.all_input_nodes:
                self.last_use[used] = node

    # ---- geometry, once per model and grid ---------------------------------------------------
    def _box(self, node, shapes, grid_tops, grid_lefts, patch):
        """The node's changed :class:`Box`, or None where its output is not an (N, C, H, W)
        map depending on the image (then the node runs whole)."""
        shape = shapes[node]
        spatial = shape is not None and len(shape) == 4
        if node.op == "placeholder":
            rows = torch.stack([grid_tops, grid_tops + patch], 1)
            columns = torch.stack([grid_lefts, grid_lefts + patch], 1)
            return box_from(rows, columns, shape[2], shape[3])
        changed = [used for used in node.all_input_nodes if used in self.changed]
        if not changed:
            return None  # does not depend on the image: computed once by keep()
        self.changed.add(node)
        boxes = [self.boxes[used] for used in changed]
        if not spatial or node.op == "output" or any(box is None for box in boxes):
            return None
        kind = self._kind(node, shapes)
        if kind is None:
            if not (node.op == "call_module"
                    and isinstance(self.modules[node.target], GLOBAL_POOLS)):
                self.fallbacks.append(node)
            return None
        if kind == "window":
            kernel, stride, padding, dilation, _ = window_of(self.modules[node.target])
            (box,) = boxes
            rows = torch.stack(changed_interval(*box.rows.unbind(1), kernel[0], stride[0],
                                                padding[0], dilation[0], shape[2]), 1)
            columns = torch.stack(changed_interval(*box.columns.unbind(1), kernel[1],
                                                   stride[1], padding[1], dilation[1],
                                                   shape[3]), 1)
            if self.tau is not None:
                rows, columns = threshold(rows, shape[2], self.tau), \
                    threshold(columns, shape[3], self.tau)
        else:  # pointwise or concatenation: the union of the inputs' intervals
            rows = torch.stack([torch.stack([b.rows[:, 0] for b in boxes]).min(0).values,
                                torch.stack([b.rows[:, 1] for b in boxes]).max(0).values], 1)
            columns = torch.stack([
                torch.stack([b.columns[:, 0] for b in boxes]).min(0).values,
                torch.stack([b.columns[:, 1] for b in boxes]).max(0).values], 1)
        box = box_from(rows, columns, shape[2], shape[3])
        return None if box.full else box

    def _kind(self, node, shapes):
        """``window``, ``pointwise`` or None (unknown: run whole from here)."""
        same_size = all(shapes[used] is not None and shapes[used][2:] == shapes[node][2:]
                        for used in node.all_input_nodes if used in self.changed)
        if node.op == "call_module":
            module = self.modules[node.target]
            if window_of(module) is not None and len(node.all_input_nodes) == 1:
                return "window"
            if isinstance(module, nn.AdaptiveAvgPool2d) and same_size:
                return "pointwise"  # output size = input size: each output is its input
            batch_statistics = (isinstance(module, nn.BatchNorm2d)
                                and module.running_mean is None)  # normalizes by the batch
            if (isinstance(module, POINTWISE_MODULES) and not module.training and same_size
                    and torch_forward(module) and not batch_statistics):
                return "pointwise"
            return None
        if node.op == "call_function" and same_size:
            if node.target in POINTWISE_FUNCTIONS:
                return "pointwise"
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if node.target in CONCATENATIONS and dim in (1, -3):
                return "pointwise"  # along channels: each output pixel from the same pixel
        if node.op == "call_method" and node.target in ("relu", "add", "mul") and same_size:
            return "pointwise"
        return None

    def describe_fallbacks(self):
        """One line naming the first layer that made the rest run whole, or ''."""
        if not self.fallbacks:
            return ""
        node = self.fallbacks[0]
        what = (type(self.modules[node.target]).__name__ if node.op == "call_module"
                else getattr(node.target, "__name__", str(node.target)))
        return (f"incremental occlusion: {node.name} ({what}) is not a conv, pool, BatchNorm, "
                "ReLU, addition or concatenation it can crop; whole maps from there on")

    # ---- running -----------------------------------------------------------------------------
    def _call(self, node, args, kwargs):
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return _attribute(self.graph_module, node.target)
        raise AssertionError(node.op)

    def _run_whole(self, inputs):
        """Every node's output for whole ``inputs`` (the plain forward pass)."""
        values = {}
        for node in self.nodes:
            if node.op == "placeholder":
                values[node] = inputs
            elif node.op == "output":
                values[node] = values[node.args[0]]
            else:
                args = fx.node.map_arg(node.args, values.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
                values[node] = self._call(node, args, kwargs)
        return values

    @torch.no_grad()
    def keep(self, image):
        """Run the unoccluded ``image`` (C, H, W) once and keep every layer's output."""
        self.kept = self._run_whole(image[None])
        self._padded = {}

    def _kept_padded(self, node, padding, value):
        """The kept (C, H, W) output of ``node`` padded by ``padding`` with ``value``."""
        key = (node, padding, value)
        if key not in self._padded:
            rows, columns = padding
            padded = F.pad(self.kept[node][0], (columns, columns, rows, rows), value=value)
            self._padded[key] = padded.permute(1, 2, 0).contiguous()  # (H, W, C)
        return self._padded[key]

    def _region(self, node, value, tops, lefts, height, width, padding=(0, 0), pad_value=0.0):
        """(B, C, height, width): ``node``'s output, occluded, in the window at (tops, lefts)
        of the map padded by ``padding``: the kept map with the node's recomputed box on top."""
        base = crop(self._kept_padded(node, padding, pad_value), tops, lefts, height, width)
        return overlay(base, tops - padding[0], lefts - padding[1], value.values, value.tops,
                       value.lefts)

    def _whole(self, node, value):
        """``node``'s whole occluded output (B, C, H, W) from its box value."""
        if not isinstance(value, BoxValue):
            return value
        height, width = self.shapes[node][2:]
        zeros = torch.zeros_like(value.tops)
        return self._region(node, value, zeros, zeros, height, width)

    @torch.no_grad()
    def logits(self, fill, positions):
        """Logits (B, K) of the kept image occluded at flat grid ``positions`` (B,).

        Args:
            fill: (C, H, W) the patch's content at every pixel (normalized).
        """
        device = fill.device
        values = {}
        for node in self.nodes:
            box = self.boxes[node]
            if node.op == "placeholder":
                tops, lefts = box.tops[positions].to(device), box.lefts[positions].to(device)
                patch = crop(fill.permute(1, 2, 0).contiguous(), tops, lefts, box.height,
                             box.width)
                values[node] = BoxValue(patch, tops, lefts)
            elif node.op == "output":
                return self._whole(node.args[0], values[node.args[0]])
            elif node not in self.changed:
                continue  # the kept value serves every position
            elif box is None:
                values[node] = self._run_node_whole(node, values)
            else:
                values[node] = self._run_node_box(node, box, values, positions, device)
            for used in node.all_input_nodes:  # free what no later node reads
                if self.last_use.get(used) is node:
                    values.pop(used, None)
        raise AssertionError("graph without output")

    def _run_node_whole(self, node, values):
        def whole(used):
            if used in self.changed:
                return self._whole(used, values[used])
            return self.kept[used]  # does not depend on the image
        args = fx.node.map_arg(node.args, whole)
        kwargs = fx.node.map_arg(node.kwargs, whole)
        return self._call(node, args, kwargs)

    def _run_node_box(self, node, box, values, positions, device):
        tops, lefts = box.tops[positions].to(device), box.lefts[positions].to(device)
        module = self.modules.get(node.target) if node.op == "call_module" else None
        window = None if module is None else window_of(module)
        if window is not None:
            kernel, stride, padding, dilation, pad_value = window
            (used,) = node.all_input_nodes
            height = (box.height - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
            width = (box.width - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
            region = self._region(used, values[used], tops * stride[0], lefts * stride[1],
                                  height, width, padding, pad_value)
            output = window_call(module, region)
            if self.tau is not None:  # outside the cut box: the unoccluded activations
                output = self._outside_kept(node, box, positions, output, tops, lefts)
        else:
            inplace = getattr(module, "inplace", False)

            def read(used):
                if used not in self.changed:
                    kept = self.kept[used]
                    if (isinstance(kept, torch.Tensor) and kept.dim() == 4
                            and kept.shape[-2:] == self.shapes[node][2:]):
                        return crop(self._kept_padded(used, (0, 0), 0.0), tops, lefts,
                                    box.height, box.width)
                    return kept  # a number, or broadcast over the map (a (1, C, 1, 1) scale)
                value = values[used]
                if (not inplace and value.values.shape[-2:] == (box.height, box.width)
                        and torch.equal(value.tops, tops) and torch.equal(value.lefts, lefts)):
                    return value.values  # a pointwise layer after its input: the same box
                return self._region(used, values[used], tops, lefts, box.height, box.width)
            args = fx.node.map_arg(node.args, read)
            kwargs = fx.node.map_arg(node.kwargs, read)
            output = self._call(node, args, kwargs)
        return BoxValue(output, tops, lefts)

    def _outside_kept(self, node, box, positions, output, tops, lefts):
        """``output`` (B, C, h, w) of the box at (tops, lefts) with the entries outside each
        position's (thresholded) interval replaced by the kept unoccluded ones."""
        height, width = output.shape[-2:]
        device = output.device
        rows = tops[:, None] + torch.arange(height, device=device)  # (B, h)
        columns = lefts[:, None] + torch.arange(width, device=device)  # (B, w)
        row_span, column_span = box.rows[positions].to(device), box.columns[positions].to(device)
        inside = (((rows >= row_span[:, :1]) & (rows < row_span[:, 1:]))[:, :, None]
                  & ((columns >= column_span[:, :1]) & (columns < column_span[:, 1:]))[:, None])
        kept = crop(self._kept_padded(node, (0, 0), 0.0), tops, lefts, height, width)
        return torch.where(inside[:, None], output, kept)

    # ---- cost --------------------------------------------------------------------------------
    def flops(self):
        """Multiply-adds x 2 per occluded image of the conv and Linear layers: (plain,
        incremental, per-layer list of (name, plain, incremental))."""
        rows = []
        for node in self.nodes:
            if node.op != "call_module":
                continue
            module = self.modules[node.target]
            shape = self.shapes[node]
            if isinstance(module, nn.Conv2d):
                per_output = 2 * module.in_channels // module.groups \
                    * module.kernel_size[0] * module.kernel_size[1]
                whole = per_output * shape[1] * shape[2] * shape[3]
                box = self.boxes[node]
                part = whole if box is None else per_output * shape[1] * box.height * box.width
            elif isinstance(module, nn.Linear):
                whole = part = 2 * module.in_features * module.out_features
            else:
                continue
            rows.append((node.target, whole, part))
        return sum(r[1] for r in rows), sum(r[2] for r in rows), rows

    def bytes_per_position(self, element_size):
        """Memory one patch position needs at most: every layer's box (or whole map) and the
        largest region read, in bytes; batches are sized by it."""
        total = largest = 0
        for node in self.nodes:
            shape = self.shapes[node]
            if shape is None or len(shape) < 2:
                continue
            box = self.boxes[node]
            size = shape[1:].numel() if box is None else shape[1] * box.height * box.width
            total += size
            largest = max(largest, size)
        return (total + 4 * largest) * element_size


def window_call(module, region):
    """The conv or pool ``module`` on an already padded ``region``."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(region, module.weight, module.bias, module.stride, 0, module.dilation,
                        module.groups)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(region, module.kernel_size, module.stride, 0, module.dilation)
    return F.avg_pool2d(region, module.kernel_size, module.stride, 0,
                        divisor_override=module.divisor_override)


def _attribute(module, target):
    for name in target.split("."):
        module = getattr(module, name)
    return module


def positions_per_batch(plan, element_size, max_memory_mb):
    """How many patch positions fit the ``max_memory_mb`` budget (at least one)."""
    return max(1, int(max_memory_mb * 2 ** 20 // plan.bytes_per_position(element_size)))


def incremental_plan(model, example, patch, tops, lefts, tau=None):
    """An :class:`IncrementalOcclusion`, saying on stderr in one line where it runs whole maps
    (a layer it cannot crop); None, also said in one line, if ``torch.fx`` cannot trace the
    model (Python control flow on tensor values), or if the net pools globally before its
    head (squeeze-and-excitation, ``model.nets.anatomy``): a patch there changes every position
    after it, so the boxes would cover whole maps from the first such block on, and every
    occluded image runs whole."""
    inner = anatomy(model).inner_global_pools
    if inner:
        note(f"incremental occlusion: {inner[0]} pools globally before the head "
             f"({len(inner)} such places: squeeze-and-excitation), so a patch changes every "
             "position after it; running every occluded image whole")
        return None
    try:
        plan = IncrementalOcclusion(model, example, patch, tops, lefts, tau)
    except Exception as error:  # torch.fx raises many kinds; any of them means: run whole
        note(f"incremental occlusion: torch.fx cannot trace {type(model).__name__} "
             f"({one_line(error)}); running every occluded image whole")
        return None
    line = plan.describe_fallbacks()
    if line:
        note(line)
    return plan
