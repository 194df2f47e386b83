"""``--target``: the class each image is explained for, by index or by name, or the predicted
class per image when it is not given."""
import torch

from model.errors import UserError


def check_target(spec, info, labelled=True):
    """Check ``--target`` before any work (scripts that ignore it still refuse a bad one).

    Raises:
        UserError: an unknown class, an index out of range, or ``true`` without labels.
    """
    if spec == "true" and not labelled:
        raise UserError("--target true needs test images with labels; image files have "
                        "none (use pred, a class index or a class name)")
    if spec not in ("pred", "true"):
        class_index(spec, info)


def class_index(spec, info):
    """The class index named by ``spec`` (a class name, any case, or an index)."""
    names = {name.lower(): index for index, name in enumerate(info.classes)}
    if spec.lower() in names:
        return names[spec.lower()]
    if spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(info.classes):
            raise UserError(f"--target {spec}: class index out of range 0-"
                            f"{len(info.classes) - 1}")
        return index
    raise UserError(f"--target {spec}: unknown class; use pred, true, 0-"
                    f"{len(info.classes) - 1} or one of: {', '.join(info.classes)}")


def resolve_targets(spec, info, logits, labels):
    """One class index per image for ``--target``.

    Args:
        spec: ``pred`` (the predicted class), ``true`` (the label), a class index or name.
        logits: (N, classes) model outputs for the images.
        labels: (N,) true labels, -1 where unknown.

    Returns:
        (N,) int64 on the logits' device.
    """
    count = len(logits)
    if spec == "pred":
        return logits.argmax(1)
    if spec == "true":
        check_target(spec, info, labelled=bool((labels >= 0).all()))
        return labels.to(logits.device)
    index = class_index(spec, info)
    return torch.full((count,), index, dtype=torch.int64, device=logits.device)
