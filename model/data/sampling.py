"""Seeded samples of test images for galleries: the model's predictions on a test split, and a
fixed sample that mixes right and wrong decisions and takes the classes in turn."""
import torch

from model.data.batches import iterate_batches
from model.runtime.batching import images_per_batch
from model.runtime.device import fast_layout
from model.nets.folding import fold_batch_norm


@torch.no_grad()
def test_predictions(model, test_set, device, batch_size=512, progress=None):
    """The model's predicted class for every image of ``test_set``: (N,) int64 on the CPU.

    ``progress(done, total)`` is called after each batch with the images done so far.
    """
    return torch.cat([logits.argmax(1).cpu() for logits, _ in
                      test_logits(model, test_set, device, batch_size, progress)])


def test_logits(model, test_set, device, batch_size=512, progress=None):
    """Yield (logits (B, classes) float32, labels (B,)) over ``test_set``, batch by batch (the
    caller runs it under ``torch.no_grad``).

    On channels-last batches of at most ``images_per_batch`` images: for the trained
    MobileNetV2 at 224 px 140 photos/s against 56 in contiguous batches of 512; the CIFAR-10
    net 992 against 721 images/s (2-core "AMD EPYC" Zen 5; ``inference_mode`` measured no
    faster than ``no_grad``). In float32: bfloat16 was 1.8x faster still there, but its
    logits differed by up to 0.7 and it flipped 1 prediction in 96 photos, so the accuracy
    and the report's gallery stay float32's.
    ``progress(done, total)`` is called after each batch with the images done so far.
    """
    done = 0
    size = test_set.info.image_size
    net = fold_batch_norm(model)  # the same logits, up to float32 rounding, sooner
    for inputs, labels in iterate_batches(test_set, images_per_batch(batch_size, size, size),
                                          device):
        yield net(fast_layout(inputs)), labels
        done += len(inputs)
        if progress is not None:
            progress(done, len(test_set))


@torch.no_grad()
def sample_test_images(model, test_set, count, seed, device, wrong_share=0.25,
                       batch_size=512, predictions=None):
    """A fixed, seeded sample of test images that mixes right and wrong decisions and classes.

    Up to ``wrong_share`` of the ``count`` images are misclassified ones (as many as the model
    makes), the rest correctly classified. Each group is drawn at random with ``seed`` and then
    taken class by class in turn (one image of every class, then a second of every class, ...),
    so that as many classes as possible appear. Misclassified images come first.

    ``predictions``: the model's predictions on ``test_set`` if already computed
    (:func:`test_predictions`).

    Returns:
        (indices (count,) int64, predictions (count,) int64), on the CPU.
    """
    if predictions is None:
        predictions = test_predictions(model, test_set, device, batch_size)
    generator = torch.Generator().manual_seed(seed)
    count = min(count, len(test_set))
    wrong = (predictions != test_set.labels).nonzero()[:, 0]
    right = (predictions == test_set.labels).nonzero()[:, 0]
    wrong = _classes_in_turn(wrong, test_set.labels, generator)[:int(wrong_share * count)]
    right = _classes_in_turn(right, test_set.labels, generator)[:count - len(wrong)]
    indices = torch.cat([wrong, right])
    return indices, predictions[indices]


def _classes_in_turn(indices, labels, generator):
    """``indices`` shuffled, then reordered so that classes take turns (a stable sort by how
    many of the same class came before)."""
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    if not len(shuffled):
        return shuffled
    one_hot = torch.nn.functional.one_hot(labels[shuffled])
    turn = (one_hot.cumsum(0) * one_hot).sum(1)  # 1 for a class's first image, 2 for its second
    return shuffled[torch.sort(turn, stable=True).indices]
