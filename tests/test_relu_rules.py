"""The ReLU rules (guided backprop, DeconvNet) on ReLUs called as functions, and the line that
says what they do on other activations (``model.attribution.gradients``)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attribution.gradients import input_gradient, relu_rule, rule_note
from model.nets.architectures import build_model


class TwoReLUs(nn.Module):
    """conv - ReLU - conv - ReLU - mean - Linear, the ReLUs modules or function calls."""

    def __init__(self, functional, inplace=False):
        super().__init__()
        self.functional, self.inplace = functional, inplace
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x, inplace=self.inplace) if self.functional else self.relu1(x)
        x = self.conv2(x)
        x = torch.relu(x) if self.functional else self.relu2(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("inplace", [False, True])
def test_functional_relus_follow_the_rule_as_relu_modules_do(inplace):
    torch.manual_seed(0)
    modules = TwoReLUs(functional=False).double().eval()
    functions = TwoReLUs(functional=True, inplace=inplace).double().eval()
    functions.load_state_dict(modules.state_dict())
    inputs, targets = torch.randn(2, 3, 8, 8, dtype=torch.double), torch.tensor([1, 2])
    plain = input_gradient(modules, inputs, targets, "saliency")
    for rule in ("saliency", "guided", "deconvnet"):
        expected = input_gradient(modules, inputs, targets, rule)
        # float64, the same products in the same order: equal up to rounding
        assert torch.allclose(input_gradient(functions, inputs, targets, rule), expected,
                              rtol=0, atol=1e-12), rule
        if rule != "saliency":
            assert not torch.allclose(expected, plain)  # the rule changes the gradient
    with relu_rule(functions, "guided"):  # the function mode ends with the block
        pass
    assert torch.allclose(input_gradient(functions, inputs, targets, "saliency"), plain,
                          rtol=0, atol=1e-12)


def test_the_rules_say_what_they_do_beyond_relus():
    assert rule_note(build_model("vgg", 3, 5, 32), "guided") == ""
    efficientnet = build_model("efficientnet_b0", 3, 5, 32)
    assert "silu" in rule_note(efficientnet, "guided")
    assert rule_note(efficientnet, "saliency") == ""
