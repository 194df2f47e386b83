"""Second formulations that the tests hold the package's methods against (not shipped in
``model/``: nothing but the tests needs them)."""
import torch
import torch.nn as nn

from model.attribution.maps import normalize_maps
from model.attribution.registry import get_method
from model.units.mirror import _MIRRORABLE, forward_with_switches, project_down


def compute_input_gradient(model, inputs, targets, rule="guided"):
    """Class score y^c sent back to the input through the mirror net, by ``rule``.

    ``guided`` gives guided backpropagation (Springenberg et al. 2015, sec. 3.4), ``saliency``
    the image-specific class saliency dy^c/dx (Simonyan et al. 2014, sec. 3, Eq. 2). Above the
    last feature layer the net has only pooling and Linear layers, no ReLU, so there every rule
    is the plain gradient, which autograd gives; from that layer down the mirror net applies
    the rule.

    Args:
        inputs: (N, C, H, W); targets: (N,) class per image.
    Returns:
        (N, C, H, W).
    """
    children = list(model.children())
    depth = next(i for i, m in enumerate(children) if not isinstance(m, _MIRRORABLE))
    stack, head = children[:depth], nn.Sequential(*children[depth:])
    assert not any(isinstance(m, nn.ReLU) for m in head.modules()), "a ReLU above the mirror"
    with torch.no_grad():
        features, records = forward_with_switches(stack, inputs)
    with torch.enable_grad():
        features = features.detach().requires_grad_(True)
        score = head(features).gather(1, targets[:, None]).sum()
        gradient = torch.autograd.grad(score, features)[0]
    with torch.no_grad():
        return project_down(stack, records, gradient, rule)


def compute_cam(model, inputs, targets, method, layer, **options):
    """``model.attribution.cam.class_activation_map`` with the registry's defaults, min-max
    normalized to [0, 1] (finite; a constant map becomes zeros)."""
    return normalize_maps(get_method(method)(model, inputs, targets, layer=layer, **options))
