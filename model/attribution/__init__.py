"""Every attribution method, registered: importing this package fills ``METHODS``.

    from model.attribution import METHODS
    maps = METHODS["gradcam"](model, inputs, targets, layer="conv4")   # (N, H, W)

The methods live beside their core (``occlusion``, ``incremental``, ``cam``, ``gradients``);
this module imports them, orders them by family (``FAMILIES``) and adds the ``random`` baseline
that gives every evaluation number its chance level.
"""
import torch

# Importing the method modules registers their methods.
from model.attribution import cam, gradients, occlusion  # noqa: F401
from model.attribution.registry import BASELINE, METHODS, get_method, register

FAMILIES = ("perturbation", "cam", "gradient", "baseline")  # the order tables list them in


@register(BASELINE, paper="the chance level", equation="a uniformly random map per image",
          family="baseline", cost="none", defaults={"seed": 0})
def random_map(model, inputs, targets, *, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((len(inputs), *inputs.shape[2:]), generator=generator).to(inputs.device)


# Registration order follows the imports; tables and figures list the families in order.
for _name in sorted(METHODS, key=lambda name: FAMILIES.index(METHODS[name].family)):
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["BASELINE", "FAMILIES", "METHODS", "get_method"]
