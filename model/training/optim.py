"""The optimizer side of training: the one-cycle learning-rate schedule and SGD (or AdamW, or
Muon for the conv filters) with per-group learning-rate scales.

The CIFAR-10 recipe takes two tricks from Jordan's airbench (2024) that live here: BatchNorm
biases that learn 64 times faster than the weights, and Muon's orthogonalized updates of the
conv filters (airbench94_muon).
"""
import math

import torch
import torch.nn as nn


def learning_rate_at(step, total_steps, peak_lr, warmup_fraction=0.15, schedule="cosine",
                     warmup_start=0.0):
    """One-cycle schedule: linear warm-up to ``peak_lr``, then decay to zero.

    Warm-up as in Goyal et al. 2017 (sec. 2.2), from ``warmup_start * peak_lr``; ``cosine``
    annealing as in Loshchilov & Hutter 2017 (Eq. 5 with a single cycle): lr = peak/2 *
    (1 + cos(pi * t)), t the fraction of decay done; ``linear``: lr = peak * (1 - t), the
    short-schedule choice of Smith's one-cycle runs and airbench's triangle. A pure function
    of the step, so a resumed run needs no scheduler state.
    """
    warmup_steps = max(1, int(warmup_fraction * total_steps))
    if step < warmup_steps:
        return peak_lr * (warmup_start + (1 - warmup_start) * (step + 1) / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak_lr * (1.0 - progress)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model, lr, weight_decay, recipe=None):
    """SGD with Nesterov momentum (or, where ``recipe.optimizer`` says so, AdamW: Loshchilov &
    Hutter 2019, weight decay decoupled from the gradient's scaling) over the trainable
    parameters, in groups whose ``lr_scale`` multiplies the schedule's learning rate.

    - conv and Linear weights: ``lr``, ``weight_decay``;
    - other biases and BatchNorm parameters: ``lr``, no weight decay;
    - with ``recipe.norm_bias_lr_scale`` = b != 1 (airbench: 64): BatchNorm biases learn at
      b * lr with weight decay / b, so they shrink by the weights' factor per step;
    - with ``recipe.optimizer`` = "muon": the conv filters (4-d weights) in one group marked
      ``orthogonalize``, at ``recipe.muon_lr`` (an lr scale of muon_lr / lr, so the schedule
      moves it too) and momentum ``recipe.muon_momentum``, stepped by :class:`Muon`.
    """
    norm_bias_scale = recipe.norm_bias_lr_scale if recipe else 1.0
    muon = recipe is not None and recipe.optimizer == "muon"
    norm_biases = ({id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
                   if norm_bias_scale != 1 else set())
    groups = {}  # (role, lr scale, weight decay) -> parameters
    for parameter in (p for p in model.parameters() if p.requires_grad):  # not a frozen stem
        if muon and parameter.ndim == 4:  # conv filters; Muon keeps their norm, no decay
            role = ("filter", recipe.muon_lr / lr, 0.0)
        elif id(parameter) in norm_biases:
            role = ("norm_bias", norm_bias_scale, weight_decay / norm_bias_scale)
        elif parameter.ndim > 1:
            role = ("decay", 1.0, weight_decay)
        else:
            role = ("no_decay", 1.0, 0.0)
        groups.setdefault(role, []).append(parameter)
    param_groups = [{"params": params, "lr": lr * scale, "lr_scale": scale, "weight_decay": decay,
                     **({"orthogonalize": True, "momentum": recipe.muon_momentum}
                        if role == "filter" else {})}
                    for (role, scale, decay), params in groups.items()]
    if recipe is not None and recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    if muon:
        return Muon(param_groups, lr=lr, momentum=recipe.momentum)
    return torch.optim.SGD(param_groups, lr=lr, momentum=recipe.momentum if recipe else 0.9,
                           nesterov=True)


# Coefficients of the quintic iteration X <- a X + (b A + c A^2) X, A = X X^T, chosen by
# Jordan et al. (2024) so that small singular values grow fastest; the fixed point is near 1,
# not exactly 1 (the iterate's singular values end in about 0.7 to 1.2), which trains as well.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix, steps=3, eps=1e-7):
    """An approximate U V^T of ``matrix`` = U S V^T (the nearest semi-orthogonal matrix): a few
    steps of Jordan et al.'s quintic Newton-Schulz iteration (2024, "Muon: An optimizer for
    hidden layers in neural networks"), started from ``matrix`` / its Frobenius norm so that
    every singular value lies in (0, 1]. Rows and columns keep their roles: the iteration runs
    on the wide orientation, where X X^T is the smaller product.
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum for every group, except that groups marked ``orthogonalize``
    (conv filters) step along the orthogonalized momentum: Muon (Jordan et al. 2024, as in
    airbench94_muon). For such a parameter W (out x in x k x k, seen as out x (in k k)):

        B <- mu B + G;   D = G + mu B (Nesterov);   W <- W * sqrt(out) / ||W||;
        W <- W - lr * orthogonalize(D)

    The update has every singular value near 1 whatever the gradient's scale, so the filters
    learn at one rate however the loss is scaled; W is first scaled back to norm sqrt(out)
    (each filter about unit norm on average), since the BatchNorm after each conv makes the
    net blind to the filters' scale, and a growing norm would shrink the effective step.
    Weight decay is ignored for these groups.
    """

    def __init__(self, params, lr, momentum):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": 0.0,
                                  "orthogonalize": False})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # torch.optim's interface: re-evaluate the loss first
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                gradient = parameter.grad
                if group["weight_decay"] and not group["orthogonalize"]:
                    gradient = gradient.add(parameter, alpha=group["weight_decay"])
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(gradient)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(gradient)
                direction = gradient.add(buffer, alpha=momentum)  # Nesterov
                if group["orthogonalize"]:
                    parameter.mul_(len(parameter) ** 0.5 / parameter.norm())
                    direction = orthogonalize(direction.reshape(len(direction), -1))
                parameter.add_(direction.view_as(parameter), alpha=-group["lr"])
        return loss


def set_learning_rate(optimizer, lr):
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before the scales: 1
