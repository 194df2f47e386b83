"""The registry of attribution methods: each method is declared once, where it is defined.

A method is a function ``(model, inputs, targets, *, layer=None, **options) -> (N, H, W)``
maps at input resolution, registered with :func:`register` together with its paper and
equation, its default options, what it needs and what it costs. The method scripts, the
evaluation, the report and the tests all read :data:`METHODS` (filled by importing
``model.attribution``), so adding a method is one function, one ``@register`` and its tests.

Several targets per image: every method also takes ``targets`` (N, T) and returns maps
(N, T, H, W). A method registered with ``shares_passes`` reads every target's score from the
same forward passes (the logits of one pass hold every class): its function takes the (N, T)
targets itself. Any other method (a gradient needs one backward pass per target) is called
once on the images repeated T times, image-major.
"""
import inspect
from dataclasses import dataclass, field

from model.errors import UserError

NEEDS = {
    "layer": "a conv layer (--layer; default the last)",
    "gradients": "one backward pass",
    "gap-linear": "the layer to feed global average pooling and one Linear layer",
    "info": "the dataset's normalization (for pixel-space fills and baselines)",
}


@dataclass(frozen=True)
class AttributionMethod:
    """One attribution method and what a caller needs to know about it.

    Attributes:
        name: the name users type (``--method gradcam``).
        function: ``(model, inputs, targets, *, layer=None, **options) -> (N, H, W)``.
        paper, equation: where the method comes from.
        family: ``cam``, ``gradient``, ``perturbation`` or ``baseline``.
        cost: forward and backward passes per image, in words.
        signed: whether maps carry a sign (negative = evidence against the class).
        display: how a map becomes one value per pixel.
        defaults: the method's options and their defaults (the only place they are written).
        needs: keys of :data:`NEEDS`.
        evaluated: scored by default by ``evaluate_attributions.py``.
        shares_passes: ``function`` takes targets (N, T) and returns (N, T, H, W) maps,
            all read from the passes one target needs.
    """

    name: str
    function: object
    paper: str
    equation: str
    family: str
    cost: str
    signed: bool = False
    display: str = "the map itself"
    defaults: dict = field(default_factory=dict)
    needs: frozenset = frozenset()
    evaluated: bool = True
    shares_passes: bool = False

    def __call__(self, model, inputs, targets, *, layer=None, **options):
        """The maps, (N, H, W) for targets (N,) or (N, T, H, W) for targets (N, T), with the
        defaults filled in and options the method does not take dropped (callers pass one set
        of options, such as ``batch_size``, to all)."""
        if "layer" in self.needs and layer is None:
            raise UserError(f"{self.name} needs a layer")
        if "info" in self.needs and options.get("info") is None:
            raise UserError(f"{self.name} needs info=DatasetInfo (the dataset's normalization)")
        accepted = inspect.signature(self.function).parameters
        chosen = {key: value for key, value in {**self.defaults, **options}.items()
                  if key in accepted}
        if "layer" in accepted:
            chosen["layer"] = layer
        if targets is not None and targets.dim() == 2 and not self.shares_passes:
            count, slots = targets.shape  # every (image, target) pair as an image of its own
            maps = self.function(model, inputs.repeat_interleave(slots, 0), targets.reshape(-1),
                                 **chosen)  # (N * T, H, W), image-major
            return maps.unflatten(0, (count, slots))
        return self.function(model, inputs, targets, **chosen)


METHODS = {}  # name -> AttributionMethod, in registration order
BASELINE = "random"  # the chance-level map (``model.attribution``), a row of every table


def register(name, *, paper, equation, family, cost, signed=False, display="the map itself",
             defaults=None, needs=(), evaluated=True, shares_passes=False, function=None):
    """Declare an attribution method; used as a decorator, or with ``function=``."""
    unknown = set(needs) - set(NEEDS)
    assert not unknown, f"unknown needs {unknown}"
    assert name not in METHODS, f"{name} registered twice"

    def add(method_function):
        METHODS[name] = AttributionMethod(name, method_function, paper, equation, family, cost,
                                          signed, display, dict(defaults or {}),
                                          frozenset(needs), evaluated, shares_passes)
        return method_function

    return add(function) if function is not None else add


def get_method(name):
    """The registered method called ``name``.

    Raises:
        UserError: no such method; the message lists the registered ones.
    """
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return METHODS[name]


VARIANT_SEPARATOR = ":"  # gradcam:aug-smooth (not "+": gradcam++ has two)


def switches(method):
    """The on/off options of a method (those whose default is a bool), as users type them:
    ``aug-smooth``, ``eigen-smooth``, ``counterfactual``."""
    return [key.replace("_", "-") for key, value in method.defaults.items()
            if isinstance(value, bool)]


def method_variant(spec):
    """A method with on/off options switched on, written ``name:option:...``
    (``gradcam:aug-smooth``, ``gradcam:eigen-smooth:counterfactual``), as the evaluation
    scores it beside the plain method.

    Returns:
        (AttributionMethod, options dict such as ``{"aug_smooth": True}``).
    Raises:
        UserError: an unknown method, or an option the method does not have.
    """
    name, *flags = spec.split(VARIANT_SEPARATOR)
    method = get_method(name)
    options = {}
    for flag in flags:
        if flag not in switches(method):
            takes = ", ".join(switches(method)) or "none"
            raise UserError(f"'{flag}' is not an option of {name} (in '{spec}'); its on/off "
                            f"options: {takes}")
        options[flag.replace("-", "_")] = True
    return method, options
