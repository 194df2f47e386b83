"""One forward and one backward pass read by every gradient method that asks the same question.

The explorer asks many maps of the same images and targets: Grad-CAM, Grad-CAM++, XGrad-CAM,
HiResCAM and LayerCAM at three layers, each with its counterfactual, then saliency, Input x
Gradient, guided backprop and guided Grad-CAM. All of them read A (a layer's maps) and dy^c/dA,
or dy^c/dx by one of the ReLU rules; one forward pass with hooks on every layer and one
backward pass to all of them at once give the same numbers that 34 separate passes give.

While :func:`shared_passes` is active, ``model.attribution.cam.activations_and_gradients`` and
``model.attribution.gradients.input_gradient`` ask :func:`lookup` first; it answers only a call
on the very tensors the block was opened with (``is``, not equal values), so a method that
transforms its input (aug-smooth, SmoothGrad, Integrated Gradients' path) computes its own.

Counterfactual gradients (those of -y^c, Selvaraju et al. 2017, sec. 3) are the plain ones
negated, exactly: the backward pass is linear in its seed and negation rounds symmetrically.
The guided and DeconvNet rules clamp the signal, so their counterfactual is a pass of its own.
"""
from contextlib import ExitStack, contextmanager

import torch

from model.nets.layers import as_feature_maps, recorded_output

_ACTIVE = []  # the open SharedPasses, innermost last


class SharedPasses:
    """The passes of one batch: ``model``, ``inputs`` (N, C, H, W), ``targets`` (N,), and the
    conv ``layers`` whose maps and gradients the plain pass records."""

    def __init__(self, model, inputs, targets, layers):
        self.model, self.inputs, self.targets = model, inputs, targets
        self.layers = list(dict.fromkeys(layers))
        self._plain = None  # (layer -> (A, dy^c/dA), dy^c/dx, logits)
        self._ruled = {}  # (rule, counterfactual) -> dy^c/dx by that rule

    def serves(self, model, inputs, targets):
        return model is self.model and inputs is self.inputs and targets is self.targets

    def _plain_pass(self):
        """One forward pass with a hook on every layer, one backward pass to all of them and
        to the input."""
        if self._plain is None:
            with ExitStack() as hooks, torch.enable_grad():
                records = [hooks.enter_context(recorded_output(self.model, layer))
                           for layer in self.layers]
                pixels = self.inputs.detach().requires_grad_(True)
                logits = self.model(pixels)
                maps = [as_feature_maps(record.get("output"), self.model, layer)
                        for record, layer in zip(records, self.layers)]
                score = logits.gather(1, self.targets[:, None]).sum()
                pixel_gradient, *gradients = torch.autograd.grad(score, [pixels, *maps])
            per_layer = {layer: (activation.detach(), gradient)
                         for layer, activation, gradient in zip(self.layers, maps, gradients)}
            self._plain = per_layer, pixel_gradient, logits.detach()
        return self._plain

    def activations_and_gradients(self, layer, counterfactual):
        """(A, dy^c/dA or that of -y^c, logits), as ``cam.activations_and_gradients``."""
        per_layer, _, logits = self._plain_pass()
        activations, gradients = per_layer[layer]
        return activations, (-gradients if counterfactual else gradients), logits

    def input_gradient(self, rule, counterfactual, compute):
        """dy^c/dx by ``rule`` (``gradients.RULES``); ``compute()`` runs a pass of its own for
        the rules the plain pass cannot give."""
        if rule == "saliency":
            pixel_gradient = self._plain_pass()[1]
            return -pixel_gradient if counterfactual else pixel_gradient
        key = (rule, counterfactual)
        if key not in self._ruled:
            self._ruled[key] = compute()
        return self._ruled[key]


@contextmanager
def shared_passes(model, inputs, targets, layers):
    """While the block runs, the gradient methods called on exactly ``inputs`` and ``targets``
    (N,) share their passes (:class:`SharedPasses`); ``layers`` are the conv layers the CAM
    methods will ask for. Nothing is computed before the first method asks."""
    _ACTIVE.append(SharedPasses(model, inputs, targets, layers))
    try:
        yield _ACTIVE[-1]
    finally:
        _ACTIVE.pop()


def lookup(model, inputs, targets, layer=None):
    """The open :class:`SharedPasses` that serves this call (and has ``layer``, if given), or
    None."""
    for passes in reversed(_ACTIVE):
        if passes.serves(model, inputs, targets) and (layer is None or layer in passes.layers):
            return passes
    return None
