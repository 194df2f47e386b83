"""What a network is made of, read from one traced forward pass: its layers, blocks and stages,
the default layer, receptive fields, and what no module hook can see.

The pass runs the net on one blank image of its input size (on the meta device when the
weights are there: no memory, no arithmetic), with a hook on every module and a
``TorchFunctionMode`` that sees every torch function (``F.conv2d``, ``torch.cat``, a
``F.relu`` called inside a ``forward``). Nothing is looked up by module class; what a module
computes is read from the functions it calls and the tensors that flow:

- a **conv** is a module that calls ``conv2d``; a **follower** is a module that keeps its
  input's shape and calls only normalizations, activations and dropout (BatchNorm, LayerNorm,
  ReLU, SiLU, GELU, ...): a conv or block stands for its run through the followers after it,
  up to the first activation (conv-BN-ReLU is one feature map, as in the project's nets);
- a **chain** is a container whose children are called once each, in order, each on the output
  of the one before (an ``nn.Sequential``, torchvision's ``Conv2dNormActivation``); a
  container whose data flow is anything else (a residual addition, a concatenation, a squeeze
  and excitation) is a **block**, studied whole; a chain of two or more blocks is a **stage**
  (ResNet's ``layer4``), listed after its blocks, unless it is the **trunk** (it starts at the
  image, or its parts are stages: MobileNet's ``features``, RegNet's ``trunk_output``);
- the **head** starts at the last global pooling: the last function that takes a map larger
  than 1x1 to one value per channel or fewer (``adaptive_avg_pool2d``, ``mean`` over the map;
  a ``flatten`` of the whole map is no pooling: VGG's classifier reads the 7x7 map). The **default layer** is the last listed layer before it: the last spatial map
  the classifier reads. A global pooling before that one (squeeze-and-excitation inside a
  block) is recorded: a patch there changes every position after it;
- **receptive fields** follow every tensor: ``conv2d`` and the pools grow them (Araujo et al.
  2019, Eq. 1-3, ``model.nets.receptive_field``), any other function takes the largest of its
  inputs' (an addition, a concatenation, a permute), a global pooling sees the whole image.

A module's output is a **feature map** when it is one tensor (N, C, H, W). The candidates a
method can study are every such module; the **main layers** (convs, blocks and stages, named
as the net names them) are the short list the scripts loop over.
"""
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from model.nets.receptive_field import ReceptiveField

NORMALIZATIONS = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "local_response_norm"}

RECTIFYING_FUNCTIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "threshold"}

ACTIVATIONS = RECTIFYING_FUNCTIONS | {
    "silu", "silu_", "gelu", "hardswish", "hardswish_", "hardsigmoid", "sigmoid", "sigmoid_",
    "tanh", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish", "prelu",
    "softplus", "rrelu", "glu"}

# Shape and bookkeeping calls that change no value: a follower may make them (LayerNorm2d
# permutes to channels-last and back; BatchNorm checks its input's dim).
NEUTRAL = {"dim", "size", "permute", "contiguous", "dropout", "dropout2d", "alpha_dropout",
           "feature_alpha_dropout", "__get__", "mul", "mul_", "add", "add_", "type_as", "to",
           "float", "view", "reshape", "clone", "numel", "__len__", "__getitem__"}

POOLS = {"max_pool2d", "avg_pool2d", "max_pool2d_with_indices", "lp_pool2d"}



@dataclass(frozen=True)
class LayerInfo:
    """One module as the traced pass saw it.

    Attributes:
        name: as ``model.named_modules()`` names it.
        kind: ``conv``, ``follower`` (normalization / activation), ``pool``, ``block``,
            ``stage``, ``trunk`` or ``other``.
        shape: the output's shape without the batch axis, () when it is no tensor.
        field: the receptive field of the output's units (None: no tensor, or not traced).
        calls: how often the pass called it.
    """

    name: str
    kind: str
    shape: tuple
    field: ReceptiveField
    calls: int

    @property
    def is_map(self):
        """Whether the output is one stack of 2-D maps, (C, H, W)."""
        return len(self.shape) == 3


@dataclass
class Anatomy:
    """Everything :func:`trace` reads from a net (see the module docstring).

    Attributes:
        input_shape: (C, H, W) of the traced image.
        layers: name -> LayerInfo for every module the pass called, in the order they finished.
        candidates: the modules whose output is a feature map, in forward order.
        main: the convs, blocks and stages, in forward order (stages after their blocks).
        default: the default layer (None: no feature map before the head).
        run_end: name -> the module whose output it stands for (a conv's or block's run through
            its followers).
        functional_activations: (where, function) for each activation called as a function
            outside an activation module (DenseNet's ``F.relu`` in ``DenseNet.forward``).
        activation_functions: every activation function the pass called.
        inner_global_pools: the modules in which a global pooling runs before the head's
            (squeeze-and-excitation blocks).
        batch_norm_pairs: (conv, norm) names where a module that computes only a batch norm
            reads a conv's output and nothing else reads it: the norm can be folded into the
            conv (``model.nets.folding``).
    """

    input_shape: tuple
    layers: dict
    candidates: list
    main: list
    default: str
    run_end: dict
    functional_activations: list = field(default_factory=list)
    activation_functions: set = field(default_factory=set)
    inner_global_pools: list = field(default_factory=list)
    batch_norm_pairs: list = field(default_factory=list)


def _argument(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _window(name, args, kwargs):
    """(kernel, stride, padding, dilation) along the height of a conv or pool call, or None."""
    if name == "conv2d":
        weight = _argument(args, kwargs, 1, "weight")
        padding = _first(_argument(args, kwargs, 4, "padding", 0))
        kernel = weight.shape[2]
        dilation = _first(_argument(args, kwargs, 5, "dilation", 1))
        if isinstance(padding, str):  # "same": (k - 1) d / 2, "valid": 0
            padding = (kernel - 1) * dilation / 2 if padding == "same" else 0
        return kernel, _first(_argument(args, kwargs, 3, "stride", 1)), padding, dilation
    if name in POOLS:
        kernel = _first(_argument(args, kwargs, 1, "kernel_size"))
        stride = _first(_argument(args, kwargs, 2, "stride", None)) or kernel
        dilation = _first(_argument(args, kwargs, 4, "dilation", 1)) if "max" in name else 1
        return kernel, stride, _first(_argument(args, kwargs, 3, "padding", 0)), dilation
    return None


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _identity(tensor):
    """A tensor's object and version: an in-place addition (``out += identity``) makes the
    same object another value, which a chain must not take for its link."""
    return id(tensor), tensor._version


def _spatial(tensor):
    return tensor.dim() == 4 and tensor.shape[2] * tensor.shape[3] > 1


class _Recorder(TorchFunctionMode):
    """The traced pass: module entries and exits (hooks), every torch function (this mode)."""

    def __init__(self, model, image_side):
        super().__init__()
        self.names = {module: name for name, module in model.named_modules()}
        self.stack = []              # modules entered, innermost last
        self.fields = {}             # id(tensor) -> ReceptiveField
        self.keep = []               # every tensor seen: ids stay unique during the pass
        self.inputs, self.outputs = {}, {}  # name -> id of its (first) input / output
        self.shapes, self.input_shapes, self.finished, self.calls = {}, {}, {}, {}
        self.functions = {}          # name -> function names called inside it (recursively)
        self.children_called = {}    # name -> its children in the order they were entered
        self.activations = {}        # (innermost module, activation function), in call order
        self.collapses = []          # (clock, innermost module) of each global pooling
        self.uses = {}               # (id, version) -> how many function calls read it
        self.clock, self.side = 0, image_side

    # ---- modules ---------------------------------------------------------------------------
    def enter(self, module, args):
        name = self.names.get(module)
        if name is None:
            return
        if self.stack:
            parent = self.stack[-1]
            self.children_called.setdefault(parent, []).append(name)
        self.stack.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        inputs = _tensors(args)
        self.keep.extend(inputs)
        self.inputs.setdefault(name, _identity(inputs[0]) if inputs else None)
        self.input_shapes.setdefault(name, tuple(inputs[0].shape[1:]) if inputs else None)

    def leave(self, module, output):
        name = self.names.get(module)
        if name is None or not self.stack or self.stack[-1] != name:
            return
        self.stack.pop()
        self.clock += 1
        if name not in self.finished:
            self.finished[name] = self.clock
            self.outputs[name] = _identity(output) if isinstance(output, torch.Tensor) else None
            self.shapes[name] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) \
                else ()
        self.keep.append(output)

    # ---- functions -------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("__get__", "dim", "size", "numel"):
            return output
        inputs = _tensors(args) + _tensors(kwargs)
        self.clock += 1
        for module in self.stack:
            self.functions.setdefault(module, set()).add(name)
        if name in ACTIVATIONS:  # which are functional is read once the pass has ended
            self.activations.setdefault((self.stack[-1] if self.stack else "", name), None)
        self._follow(name, args, kwargs, inputs, output)
        return output

    def _follow(self, name, args, kwargs, inputs, output):
        outputs = _tensors(output)
        if not outputs:
            return
        self.keep.extend(inputs + outputs)
        for tensor in inputs:
            key = _identity(tensor)
            self.uses[key] = self.uses.get(key, 0) + 1
        known = [self.fields[id(t)] for t in inputs if id(t) in self.fields]
        if not known:
            return
        field = max(known, key=lambda f: f.size)
        window = _window(name, args, kwargs)
        big_input = next((t for t in inputs if id(t) in self.fields and _spatial(t)), None)
        # one value per channel or fewer left of a map: a global pooling
        collapsed = big_input is not None and outputs[0].dim() >= 1 and (
            outputs[0].numel() // max(len(outputs[0]), 1) <= big_input.shape[1])
        if window is not None and inputs[0].dim() == 4:
            kernel, stride, padding, dilation = window
            field = ReceptiveField(field.size + (kernel - 1) * dilation * field.jump,
                                   field.jump * stride,
                                   field.start + ((kernel - 1) * dilation / 2 - padding)
                                   * field.jump)
        elif collapsed:
            field = ReceptiveField(float(self.side), field.jump, (self.side - 1) / 2)
            self.collapses.append((self.clock, self.stack[-1] if self.stack else ""))
        for tensor in outputs:
            self.fields[id(tensor)] = field


_CACHE = weakref.WeakKeyDictionary()


def declare_input(model, channels, size):
    """Record the input a net takes, (channels, size, size), for :func:`anatomy`."""
    model.cnnviz_input_shape = (int(channels), int(size), int(size))
    return model


def input_shape(model):
    """The (C, H, W) a net was declared to take (:func:`declare_input`); else the first conv's
    channels at 224 px."""
    shape = getattr(model, "cnnviz_input_shape", None)
    if shape is None and hasattr(model, "module"):  # a (Distributed)DataParallel wrapper
        shape = getattr(model.module, "cnnviz_input_shape", None)
    if shape is not None:
        return tuple(shape)
    conv = next((m for m in model.modules() if getattr(m, "weight", None) is not None
                 and m.weight.dim() == 4), None)
    return (conv.weight.shape[1] if conv is not None else 3, 224, 224)


# Sides tried, in order, for a net whose input was never declared (a test's own module): the
# first its forward pass takes.
UNDECLARED_SIDES = (224, 32, 28, 64, 16, 12, 8)


def anatomy(model):
    """The net's :class:`Anatomy`, traced once per model object and input shape. A
    (Distributed)DataParallel wrapper is read through to its module."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    shape = input_shape(model)
    cached = _CACHE.get(model)
    if cached is not None and cached.input_shape[0] == shape[0] and (
            cached.input_shape == shape or not _declared(model)):
        return cached
    if _declared(model):
        result = trace(model, shape)
    else:
        for side in UNDECLARED_SIDES:
            try:
                result = trace(model, (shape[0], side, side))
                break
            except RuntimeError:  # this net's Linear layer wants another side
                continue
        else:
            result = trace(model, shape)  # raises its own error
    _CACHE[model] = result
    return result


def _declared(model):
    return getattr(model, "cnnviz_input_shape", None) is not None


def trace(model, shape):
    """Run the traced pass on one blank (1, *shape) image and read the :class:`Anatomy`."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() \
        else torch.float32
    recorder = _Recorder(model, shape[1])
    # The net's own hooks (a pass meter, a method's recording) do not see the traced pass.
    kept = [(module, dict(module._forward_hooks), dict(module._forward_pre_hooks))
            for module in model.modules()]
    for module, _, _ in kept:
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(recorder.enter))
        handles.append(module.register_forward_hook(lambda m, a, out: recorder.leave(m, out)))
    image = torch.zeros((1, *shape), device=device, dtype=dtype)
    recorder.fields[id(image)] = ReceptiveField(1.0, 1.0, 0.0)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), recorder:
            model(image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        for module, forward, pre in kept:
            module._forward_hooks.update(forward)
            module._forward_pre_hooks.update(pre)
    return _read(recorder, tuple(shape))


def _read(rec, shape):
    head = rec.collapses[-1][0] if rec.collapses else rec.clock + 1

    def leaf(name):
        return not rec.children_called.get(name)

    def functions(name):
        return rec.functions.get(name, set())

    def is_conv(name):
        return leaf(name) and "conv2d" in functions(name)

    def is_follower(name):
        calls = functions(name)
        return (name in rec.shapes and rec.calls.get(name) == 1 and not calls & {"conv2d"}
                and calls <= NORMALIZATIONS | ACTIVATIONS | NEUTRAL
                and rec.shapes[name] == rec.input_shapes.get(name))

    def children(name):
        return rec.children_called.get(name, [])

    def is_chain(name):
        kids = children(name)
        if not kids or any(rec.calls.get(kid) != 1 for kid in kids):
            return False
        if rec.inputs.get(kids[0]) != rec.inputs.get(name):
            return False
        links = all(rec.inputs.get(b) == rec.outputs.get(a) for a, b in zip(kids, kids[1:]))
        return links and rec.outputs.get(kids[-1]) == rec.outputs.get(name)

    def holds_conv(name):
        return "conv2d" in functions(name)

    def conv_parts(name):
        return [kid for kid in children(name) if holds_conv(kid)]

    def expandable(name):  # a chain of two or more parts that compute convs
        return is_chain(name) and len(conv_parts(name)) >= 2

    def stage_like(name):  # ... each of them a container: blocks
        return expandable(name) and all(not leaf(kid) for kid in conv_parts(name))

    def is_map(name):
        return len(rec.shapes.get(name, ())) == 3

    main, kinds = [], {}

    def expand(name):
        for kid in children(name):
            if rec.finished.get(kid, head) >= head or not is_map(kid):
                continue
            if is_conv(kid):
                main.append(kid)
                kinds[kid] = "conv"
            elif not leaf(kid) and holds_conv(kid):
                if expandable(kid):
                    trunk = rec.inputs.get(kid) == rec.inputs.get("") or any(
                        stage_like(part) for part in children(kid))
                    expand(kid)
                    if not trunk:
                        main.append(kid)
                    kinds[kid] = "trunk" if trunk else "stage"
                else:
                    main.append(kid)
                    kinds[kid] = "block"

    expand("")
    if not main:  # a net of one conv: list what there is
        main = [name for name in rec.finished if is_conv(name) and is_map(name)]

    run_end = {}
    successor = {}
    for parent in rec.children_called:
        kids = children(parent)
        for a, b in zip(kids, kids[1:]):
            if rec.outputs.get(a) is not None and rec.inputs.get(b) == rec.outputs.get(a):
                successor[a] = b
    for name in rec.finished:
        end, current = name, name
        conv = is_conv(name)
        if conv or name in main:
            pooled = False
            while current in successor:
                nxt = successor[current]
                pool = leaf(nxt) and functions(nxt) & POOLS and not pooled and conv
                if not (is_follower(nxt) or pool):
                    break
                if pool:  # a pool-first block: conv, max pool, BatchNorm, ReLU
                    after = successor.get(nxt)
                    if after is None or not is_follower(after):
                        break
                    pooled = True
                end = current = nxt
                if functions(nxt) & ACTIVATIONS:
                    break
        run_end[name] = end

    layers = {}
    for name in rec.finished:
        kind = kinds.get(name) or ("conv" if is_conv(name) else "follower" if is_follower(name)
                                   else "pool" if leaf(name) and functions(name) & POOLS
                                   else "block" if not leaf(name) else "other")
        output = rec.outputs.get(run_end.get(name, name))
        layers[name] = LayerInfo(name, kind, rec.shapes.get(name, ()),
                                 rec.fields.get(output[0]) if output else None,
                                 rec.calls.get(name, 0))
    candidates = [name for name in rec.finished if name and layers[name].is_map]
    before_head = [name for name in main if rec.finished[run_end[name]] < head]
    default = before_head[-1] if before_head else (candidates[-1] if candidates else None)
    inner = list(dict.fromkeys(where for clock, where in rec.collapses[:-1]))
    pairs = [(a, b) for a, b in successor.items() if is_conv(a) and leaf(b)
             and functions(b) <= {"batch_norm"} | NEUTRAL and "batch_norm" in functions(b)
             and rec.calls.get(a) == 1 and rec.calls.get(b) == 1
             and rec.uses.get(rec.outputs[a]) == 1]
    # an activation called as a function inside a module that computes more than activations
    # (or in the net's own forward): no activation module's hook sees it
    functional = [(where, name) for where, name in rec.activations
                  if not where or functions(where) - ACTIVATIONS - NEUTRAL]
    return Anatomy(shape, layers, candidates, main, default, run_end, functional,
                   {name for _, name in rec.activations}, inner, pairs)


def layer_listing(model):
    """``--layer list``: every candidate layer as a line, with its kind (conv, block, stage,
    ...), output shape and receptive field (in px); the default marked."""
    body = anatomy(model)
    width = max((len(name) for name in body.candidates), default=4)
    lines = [f"{'layer'.ljust(width)}  {'kind':8}  {'output (C, H, W)':18}  receptive field"]
    for name in body.candidates:
        info = body.layers[name]
        field = "" if info.field is None else f"{info.field.size:g} px"
        mark = " (default)" if name == body.default else ""
        shape = "x".join(str(size) for size in info.shape)
        lines.append(f"{name.ljust(width)}  {info.kind:8}  {shape:18}  {field}{mark}")
    return lines
