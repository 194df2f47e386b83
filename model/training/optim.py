"""The optimizer side of training: the one-cycle learning-rate schedule and SGD (or AdamW)
with per-group learning-rate scales.

The CIFAR-10 recipe takes one trick from Jordan's airbench (2024) that lives here: BatchNorm
biases that learn 64 times faster than the weights.
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
      b * lr with weight decay / b, so they shrink by the weights' factor per step.
    """
    norm_bias_scale = recipe.norm_bias_lr_scale if recipe else 1.0
    norm_biases = ({id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
                   if norm_bias_scale != 1 else set())
    groups = {}  # (role, lr scale, weight decay) -> parameters
    for parameter in (p for p in model.parameters() if p.requires_grad):  # not a frozen stem
        if id(parameter) in norm_biases:
            role = ("norm_bias", norm_bias_scale, weight_decay / norm_bias_scale)
        elif parameter.ndim > 1:
            role = ("decay", 1.0, weight_decay)
        else:
            role = ("no_decay", 1.0, 0.0)
        groups.setdefault(role, []).append(parameter)
    param_groups = [{"params": params, "lr": lr * scale, "lr_scale": scale, "weight_decay": decay}
                    for (_, scale, decay), params in groups.items()]
    if recipe is not None and recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    return torch.optim.SGD(param_groups, lr=lr, momentum=recipe.momentum if recipe else 0.9,
                           nesterov=True)


def set_learning_rate(optimizer, lr):
    """Set every group's learning rate to ``lr`` times its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before the scales: 1
