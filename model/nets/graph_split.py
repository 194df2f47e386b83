"""Any network cut after one of its layers, traced with ``torch.fx``: a body from the image to
that layer's output A, and a head from A to the logits (``model.nets.layers.split_at`` does the
same for an ``nn.Sequential`` by slicing it).

A method that edits A and reads the class scores (Ablation-CAM zeroes one channel at a time)
then runs the head alone: the layers before A compute the same values for every edited copy.
Where a later node also reads a value from before the layer that does not pass through it (a
skip connection around the layer: the identity of the residual block around a conv), that value
is carried: the body returns it beside A, computed once from the unedited image, and the head
takes it as an extra input. A model ``torch.fx`` cannot trace (Python control flow on tensor
values) or a layer called more than once raises :class:`NotSplittable`; its caller falls back
to running the whole net with the layer's output replaced by a hook.
"""
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from model.errors import one_line


class NotSplittable(Exception):
    """The model cannot be cut after the layer; the message says why, on one line."""


class LayerTracer(fx.Tracer):
    """``torch.fx``'s tracer that keeps the modules of ``leaf_types`` and those named in
    ``leaf_names`` as module calls, beside torch.nn's own layers (which it keeps anyway):
    subclasses defined outside ``torch.nn`` (the whitening stem) too, so a layer is one node
    whose module can be read, and a named block (a ResNet stage) is one node whose output is
    the feature maps a method studies."""

    def __init__(self, leaf_types=(), leaf_names=()):
        super().__init__()
        self.leaf_types = tuple(leaf_types)
        self.leaf_names = frozenset(leaf_names)

    def is_leaf_module(self, module, qualified_name):
        return (qualified_name in self.leaf_names or isinstance(module, self.leaf_types)
                or super().is_leaf_module(module, qualified_name))

    def call_module(self, module, forward, args, kwargs):
        # A module traced into runs its own forward, without its hooks: a hook placed to count
        # or record values (the evaluation's pass meter on MobileNetV2's ``features``) would be
        # handed proxies, which it cannot read, and the trace would fail. A leaf keeps its
        # hooks: they run when the graph module calls it.
        return super().call_module(module, module.forward, args, kwargs)


@dataclass
class GraphSplit:
    """A net cut after one layer: ``head(body(x)[0], *body(x)[1:]) == model(x)``.

    Attributes:
        body: ``x -> (A, *carried)``: the layer's output and the earlier values the head reads.
        head: ``(A, *carried) -> model output``: every node after the layer.
        carried: the traced names of the carried values (empty for a plain chain of layers).
    """

    body: fx.GraphModule
    head: fx.GraphModule
    carried: tuple

    @torch.no_grad()
    def carried_values(self, inputs):
        """The carried values for ``inputs`` (N, C, H, W), one row per image, so that a batch
        of edited copies can take each its image's rows: a list of (N, ...) tensors (empty,
        without running the body, when nothing is carried).

        Raises:
            NotSplittable: a carried value is no tensor with one row per image (a shape read
                from the batch, say), which the copies' rows cannot be picked from.
        """
        if not self.carried:
            return []
        _, *values = self.body(inputs)
        for name, value in zip(self.carried, values):
            if not (isinstance(value, torch.Tensor) and value.dim() > 0
                    and len(value) == len(inputs)):
                raise NotSplittable(f"the layers after it read {name}, an earlier value that "
                                    "is no tensor with one row per image")
        return values


def split_after(model, name, leaf_types=(nn.Conv2d,)):
    """Cut ``model`` after its module called ``name`` (as ``model.named_modules()`` names it).

    The traced graph's nodes fall in three sets: those that depend on the layer's output A
    (the head), those that depend on the image but not on A (the body; those of them that the
    head reads are carried), and those that depend on neither (weights and constants: copied
    into the head, which recomputes them).

    Raises:
        NotSplittable: ``torch.fx`` cannot trace the model, or the layer is not called exactly
            once in its forward pass.
    """
    try:
        graph = LayerTracer(leaf_types, [name]).trace(model)
    except Exception as error:  # torch.fx raises many kinds; any of them means: not traceable
        raise NotSplittable(f"torch.fx cannot trace {type(model).__name__} "
                            f"({one_line(error)})") from None
    nodes = list(graph.nodes)
    calls = [node for node in nodes if node.op == "call_module" and node.target == name]
    if len(calls) != 1:
        raise NotSplittable(f"layer '{name}' is called {len(calls)} times in the traced "
                            "forward pass, not once")
    (layer,) = calls
    on_image, after = set(), {layer}
    for node in nodes:  # topological order: a node's inputs are classified before it
        if node.op == "placeholder" or any(used in on_image for used in node.all_input_nodes):
            on_image.add(node)
        if any(used in after for used in node.all_input_nodes):
            after.add(node)
    output = nodes[-1]
    if output not in after:
        raise NotSplittable(f"the output of {type(model).__name__} does not depend on "
                            f"layer '{name}'")
    head_nodes = [node for node in nodes if node in after and node is not layer]
    read = dict.fromkeys(used for node in head_nodes for used in node.all_input_nodes
                         if used not in after)
    carried = [node for node in read if node in on_image]
    constants = _ancestors([node for node in read if node not in on_image])

    head = fx.Graph()
    values = {layer: head.placeholder("activations")}
    for node in carried:
        values[node] = head.placeholder(node.name)
    for node in nodes:
        if node in constants or (node in after and node is not layer):
            values[node] = head.node_copy(node, values.__getitem__)

    body = fx.Graph()
    kept = _ancestors([layer, *carried])
    body_values = {}
    for node in nodes:
        if node in kept or node.op == "placeholder":  # every placeholder: the same signature
            body_values[node] = body.node_copy(node, body_values.__getitem__)
    body.output((body_values[layer], *[body_values[node] for node in carried]))
    return GraphSplit(fx.GraphModule(model, body), fx.GraphModule(model, head),
                      tuple(node.name for node in carried))


def _ancestors(nodes):
    """``nodes`` and every node they are computed from."""
    found, stack = set(), list(nodes)
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(node.all_input_nodes)
    return found
