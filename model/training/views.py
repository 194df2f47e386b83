"""The test accuracy and loss of a model, on the image alone or averaged over test-time views
(mirror, translations), and its top-k accuracies (``train_cnn.py --evaluate-only``)."""
import torch
import torch.nn.functional as F

from model.data.batches import iterate_batches
from model.data.sampling import test_logits
from model.runtime import distributed
from model.runtime.device import autocast, fast_layout

TEST_VIEWS = ("image", "flip", "flip-translate")


def view_logits(model, inputs, views="image"):
    """Logits of ``inputs`` averaged over test-time views (airbench's augmentation levels):

    - ``image``: the image alone (what the methods explain);
    - ``flip``: the mean over the image and its mirror image;
    - ``flip-translate``: half the ``flip`` mean, plus a quarter each of the ``flip`` mean of
      the image shifted by one pixel down-right and up-left (reflected border).
    """
    return image_and_view_logits(model, inputs, views)[1]


def image_and_view_logits(model, inputs, views="image"):
    """(the image's own logits, :func:`view_logits`): the image is the first view, so both
    come from the views' passes."""
    assert views in TEST_VIEWS, views

    def logits_of(images):  # bfloat16 (autocast) up to float32, float64 kept
        logits = model(images)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    image = logits_of(inputs)
    if views == "image":
        return image, image

    def mirror_mean(images, own=None):
        return 0.5 * ((logits_of(images) if own is None else own) + logits_of(images.flip(3)))

    logits = mirror_mean(inputs, image)
    if views == "flip-translate":
        height, width = inputs.shape[-2:]
        padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
        logits = 0.5 * logits + 0.25 * (mirror_mean(padded[..., :height, :width]) +
                                        mirror_mean(padded[..., 2:, 2:]))
    return image, logits


@torch.no_grad()
def loss_and_accuracy(model, dataset, device, batch_size=512, views="image", bfloat16=False,
                      channels_last=False):
    """Mean cross-entropy and accuracy of ``model`` on ``dataset``, on the image alone, and
    with ``views`` other than ``image`` also the accuracy by the mean logits over those
    test-time views (:func:`view_logits`; the methods always explain the model on the image
    alone), from the same passes.

    Under torchrun each process evaluates whole batches (``Processes.my_indices``) and the sums
    are added up over the processes.

    Args:
        bfloat16: autocast where fast (:func:`autocast`).
        channels_last: batches in channels-last order (:func:`fast_layout`).

    Returns:
        dict with ``test_loss`` and ``test_accuracy`` (the image alone), and
        ``tta_accuracy`` (the views) unless ``views`` is ``image``.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, with the views
    mine = distributed.current().my_indices(len(dataset), batch_size)
    for inputs, labels in iterate_batches(dataset, batch_size, device, indices=mine):
        if channels_last:
            inputs = fast_layout(inputs)
        with autocast(device, bfloat16):
            image, viewed = image_and_view_logits(model, inputs, views)
        sums += torch.stack([F.cross_entropy(image, labels, reduction="sum").double(),
                             (image.argmax(1) == labels).sum().double(),
                             (viewed.argmax(1) == labels).sum().double()])
    loss_sum, correct, correct_with_views = distributed.sum_over_processes(sums).tolist()
    metrics = {"test_loss": loss_sum / len(dataset), "test_accuracy": correct / len(dataset)}
    if views != "image":
        metrics["tta_accuracy"] = correct_with_views / len(dataset)
    return metrics


@torch.no_grad()
def top_k_accuracies(model, dataset, device, ks=(1, 5), progress=None):
    """Top-k accuracies of ``model`` on ``dataset``, and its accuracy when it may only choose
    among the classes the dataset holds (an ImageNet net on a folder of ten of its classes).

    A top-k hit: the true class is among the k highest logits (ties by ``torch.topk``'s
    order). Only the ``k`` below the model's class count are reported; the restricted
    accuracy only when the dataset holds fewer classes than the model has.

    Returns:
        dict with ``images``, ``top_k`` ({k: fraction}) and ``among_classes`` (the number of
        classes present) with ``among_accuracy`` (None when that is every class).
    """
    model.eval()
    present = torch.unique(dataset.labels).to(device)
    classes = None
    hits = {}
    among = torch.zeros((), dtype=torch.float64, device=device)
    for logits, labels in test_logits(model, dataset, device, progress=progress):
        classes = logits.shape[1]
        ks_here = [k for k in ks if k < classes]
        best = logits.topk(max(ks_here, default=1), dim=1).indices
        for k in ks_here:
            found = (best[:, :k] == labels[:, None]).any(1).sum().double()
            hits[k] = hits.get(k, 0) + found
        choice = present[logits[:, present].argmax(1)]
        among += (choice == labels).sum().double()
    count = len(dataset)
    restricted = classes is not None and len(present) < classes
    return {"images": count,
            "top_k": {k: (hit / count).item() for k, hit in hits.items()},
            "among_classes": len(present),
            "among_accuracy": (among / count).item() if restricted else None}
