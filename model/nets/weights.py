"""Weights as people actually have them: a state dict in a ``torch.save`` or ``.safetensors``
file, often inside a training checkpoint, its keys often behind a wrapper's prefix.

    state = read_weights("resnet18_cifar.ckpt")  # {"state_dict": {"model.conv1.weight": ...}}
    load_weights(model, state, "--weights resnet18_cifar.ckpt")  # "model." stripped, strict

``read_weights`` finds the state dict inside the file, ``fit_state_dict`` strips the prefixes
that wrappers add (DDP, Lightning, ``torch.compile``), and ``load_weights`` loads strictly, with
one line naming the first key or shape that does not fit. Files are read with
``weights_only=True`` or by safetensors: no pickled code runs.
"""
from pathlib import Path

import torch

from model.errors import UserError, one_line

# Where checkpoints keep the weights, tried in this order: torchvision's references and
# Lightning ("state_dict"), nanoGPT ("model"), the PyTorch tutorials ("model_state_dict"), and
# "net"; "module" and "model_state" are as plain. An EMA copy is left alone: a file with only
# EMA weights says "not a state dict" rather than load weights the user did not name.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module", "model_state")

# What DDP ("module."), a LightningModule's ``self.model`` ("model.") and ``torch.compile``
# ("_orig_mod.") put before every key; nested wrappers stack them.
KEY_PREFIXES = ("module.", "model.", "_orig_mod.")

CHECKPOINT_FORMAT = "cnn-viz-checkpoint"  # ``model.nets.checkpoint.FORMAT``


def read_weights(spec):
    """The state dict in the file ``spec``: ``.safetensors``, or anything ``torch.save`` wrote.

    Training checkpoints are unwrapped, repeatedly, through the first of ``WRAPPER_KEYS`` that
    holds a dict ({"model": {"state_dict": {...}}, "epoch": 3} gives the inner dict); entries
    beside the tensors of a state dict (numbers, ``_metadata``) are dropped.

    Args:
        spec: the file's path, as the user gave it (``--weights``).

    Returns:
        {key: tensor} on the CPU, keys as the file has them (see ``fit_state_dict``).

    Raises:
        UserError: a missing or unreadable file, a cnn-viz checkpoint (pointed to
            --checkpoint), or a file with no state dict in it (its keys named).
    """
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--weights {spec}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle, unsafe-global and safetensors header errors
        raise UserError(f"--weights {spec}: not a readable state dict saved by torch.save or "
                        f"safetensors ({one_line(error)})") from None
    where = []
    while isinstance(state, dict) and not _all_tensors(state):
        if state.get("format") == CHECKPOINT_FORMAT:
            raise UserError(f"--weights {spec} is a cnn-viz checkpoint; load it with --checkpoint")
        key = next((key for key in WRAPPER_KEYS if isinstance(state.get(key), dict)), None)
        if key is None:
            break
        where.append(key)
        state = state[key]
    tensors = {}
    if isinstance(state, dict):
        tensors = {key: value for key, value in state.items()
                   if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        found = (f"a {type(state).__name__}" if not isinstance(state, dict)
                 else f"a dict with keys {_first_keys(state, 5)}" if state else "an empty dict")
        if where:
            found += " at " + "".join(f"[{key!r}]" for key in where)
        raise UserError(f"--weights {spec}: not a state dict (a dict of tensors, as "
                        f"model.state_dict() gives); found {found}")
    return tensors


def fit_state_dict(state, expected_keys):
    """``state`` with the wrappers' key prefixes (``KEY_PREFIXES``) stripped to fit a net.

    Stripping a prefix from every key that starts with it, again and again, gives a few
    variants of the keys; the one that matches the most of ``expected_keys`` wins, the fewest
    strips breaking a tie. Every variant is weighed, not only those that improve step by step:
    "module.model.conv.weight" matches nothing until both prefixes are gone. A net whose own
    keys start with a prefix keeps it (stripping would match fewer), and weights that fit
    nothing keep their keys as the file has them.

    Args:
        state: {key: tensor}, not changed.
        expected_keys: the net's keys (``model.state_dict().keys()``).

    Returns:
        A new {key: tensor} dict, the same tensors.
    """
    expected = set(expected_keys)
    variants, seen = [dict(state)], {tuple(state)}
    for variant in variants:  # grows while it is read: breadth first, so fewest strips first
        for prefix in KEY_PREFIXES:
            stripped = {key.removeprefix(prefix): value for key, value in variant.items()}
            if len(stripped) == len(variant) and tuple(stripped) not in seen:  # no clashes
                seen.add(tuple(stripped))
                variants.append(stripped)
    return max(variants, key=lambda variant: len(expected.intersection(variant)))


def load_weights(model, state, source):
    """Load ``state`` into ``model`` strictly, after ``fit_state_dict``.

    Keys and shapes are checked here first, so that a mismatch reads as one line. A missing
    BatchNorm ``num_batches_tracked`` (files from before PyTorch 0.4.1, some converted files)
    is no mismatch: ``load_state_dict`` fills it in, as it always has.

    Args:
        model: the net to fill, in place.
        state: {key: tensor}, as ``read_weights`` gives.
        source: what the weights are called in the message, e.g. "--weights cifar.pt".

    Raises:
        UserError: "<source> do not fit <class>: missing keys: ...; unexpected keys: ..."
            naming the first of each, or the first key whose shape differs, with both shapes.
    """
    expected = model.state_dict()
    state = fit_state_dict(state, expected.keys())
    name = type(model).__name__
    missing = [key for key in expected
               if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = [f"{label}: {_first_keys(keys, 1)}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected))
                 if keys]
        raise UserError(f"{source} do not fit {name}: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if key in state and state[key].shape != tensor.shape:
            raise UserError(f"{source} do not fit {name}: {key!r} is {_shape(state[key])} in "
                            f"the file, {_shape(tensor)} in the net")
    model.load_state_dict(state, strict=True)


def _all_tensors(state):
    """True for a non-empty dict whose values are all tensors."""
    return bool(state) and all(isinstance(value, torch.Tensor) for value in state.values())


def _first_keys(keys, count):
    """The first ``count`` keys quoted, then "(and N more)": "'a', 'b' (and 3 more)"."""
    keys = list(keys)
    more = f" (and {len(keys) - count} more)" if len(keys) > count else ""
    return ", ".join(repr(key) for key in keys[:count]) + more


def _shape(tensor):
    """A tensor's shape as "(10, 512)"."""
    return f"({', '.join(str(size) for size in tensor.shape)})"
