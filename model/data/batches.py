"""Batches streamed from a dataset to the device: sliced from an in-memory dataset's uint8
tensor (or decoded from image folders), moved to the device, then converted, augmented and
normalized there."""
from model.data.augmentation import cutout, random_crop_flip
from model.data.folders import FolderDataset, visiting_order


def iterate_batches(dataset, batch_size, device, generator=None, augment=False, padding=4,
                    reflect=False, flips=None, cutout_size=0, indices=None, part=None,
                    min_crop_area=0.08):
    """Yield normalized (inputs, labels) batches on ``device``.

    Args:
        dataset: an :class:`~model.datasets.ImageDataset`, or a
            :class:`~model.folders.FolderDataset` (decoded by a DataLoader; ``augment`` is
            then its random resized crop and flip, and the other augmentation flags unused).
        generator: shuffles (and drives augmentation) when given; None keeps the order.
        augment: apply :func:`random_crop_flip` (needs ``generator``) with ``padding`` and
            ``reflect``.
        flips: optional (len(dataset),) bool tensor, which images to mirror (else at random).
        cutout_size: with ``augment``, the side of :func:`cutout`'s square (0: none).
        indices: the images to yield, in this order (default: all).
        min_crop_area: a FolderDataset's random resized crops cover this fraction of the
            image's area or more.
        part: maps a batch's size to the slice of it to yield (this process's part of a
            global batch, ``model.distributed.Processes.part``); its random augmentation is
            the whole batch's, so that the parts of all processes make up the one-process
            batch.
    """
    if isinstance(dataset, FolderDataset):
        yield from dataset.batches(batch_size, device, generator, augment, indices, part,
                                   min_crop_area)
        return
    order = visiting_order(len(dataset), generator, indices)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        # Augmenting the whole batch and keeping a part costs a few ms per step; drawing only
        # the part's random numbers would change the batch's draws.
        images = dataset.images[index].to(device, non_blocking=True)
        if augment:
            images = random_crop_flip(images, generator, padding, reflect,
                                      None if flips is None else flips[index])
        inputs = dataset.info.normalize(images)
        if augment and cutout_size:
            inputs = cutout(inputs, generator, cutout_size)
        rows = slice(None) if part is None else part(len(index))
        yield inputs[rows], dataset.labels[index[rows]].to(device, non_blocking=True)
