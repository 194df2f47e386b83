"""Your own images: class folders read from disk image by image (``--dataset imagefolder``).

``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (or ``DIR/test/``), any format Pillow reads,
any size: torchvision's ``ImageFolder`` layout. Unlike the in-memory datasets
(``model.datasets.ImageDataset``), a :class:`FolderDataset` keeps only the file list; batches are
decoded by a ``torch.utils.data.DataLoader`` with ``--workers`` processes while the net runs,
so a folder larger than memory can be trained on, scanned (``max_activation_search.py``) and
evaluated with memory that does not grow with the folder.

Preprocessing is torchvision's ImageNet recipe at ``--image-size`` S (default 224): for
evaluation the shorter side resized to S * 256 / 224 and the central S x S crop
(``model.data.image_files``, also used for ``--image`` files); for training a random resized crop
(8-100% of the area by default, aspect 3/4-4/3, Szegedy et al. 2015) and a random horizontal flip.
"""
import traceback
from pathlib import Path

import torch

from model.data.image_files import load_image_file, pil_to_uint8, read_image
from model.errors import UserError

EVAL_SPLITS = ("val", "test")  # the first that exists is the evaluation split

WORKER_ERROR = "Original Traceback"  # DataLoader's text around an error raised in a worker


def split_folder(root, split):
    """``root/train`` for ``train``; ``root/val`` or ``root/test`` for ``test``."""
    names = ("train",) if split == "train" else EVAL_SPLITS
    for name in names:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise UserError(f"--data-dir {root} has no {' or '.join(f'{n}/' for n in names)} folder: "
                    f"--dataset imagefolder reads {root}/{names[0]}/<class>/<image files>")


def find_images(folder):
    """The class names (sorted, as ``ImageFolder`` numbers them) and the (path, class index)
    pairs of every file with an extension Pillow can read."""
    from PIL import Image
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_index = find_classes(folder)
    except FileNotFoundError:
        raise UserError(f"{folder} has no class folders: put each class's images in "
                        f"{folder}/<class>/") from None
    extensions = tuple({*Image.registered_extensions(), ".jpg", ".jpeg", ".png"})
    try:
        samples = make_dataset(folder, class_index, extensions=extensions)
    except FileNotFoundError as error:  # a class folder without a single image
        raise UserError(f"{folder}: {str(error).splitlines()[0]}") from None
    return classes, samples


def class_mapping(folder_classes, model_classes, folder):
    """Map folder classes to the model's class indices: by name when every folder is named
    after one of the model's classes (any case), else by position when the counts agree (the
    order ``ImageFolder`` gave them in training)."""
    by_name = {name.lower(): index for index, name in enumerate(model_classes)}
    if all(name.lower() in by_name for name in folder_classes):
        return [by_name[name.lower()] for name in folder_classes]
    if len(folder_classes) == len(model_classes):
        return list(range(len(model_classes)))
    unknown = next(name for name in folder_classes if name.lower() not in by_name)
    raise UserError(f"{folder} has the class folder '{unknown}', which is none of the model's "
                    f"{len(model_classes)} classes; name the folders after its classes")


def visiting_order(count, generator=None, indices=None):
    """The dataset indices a pass over batches visits: ``indices`` (default all ``count``),
    shuffled by ``generator`` when given."""
    order = torch.arange(count) if indices is None else torch.as_tensor(indices)
    if generator is not None:
        order = order[torch.randperm(len(order), generator=generator)]
    return order


class FolderDataset(torch.utils.data.Dataset):
    """One split of class folders, decoded on demand.

    Has the attributes of ``model.datasets.ImageDataset`` that the scripts read: ``info``,
    ``labels`` (N,) int64, ``masks`` (None) and ``images``, which decodes what it is indexed
    with (``dataset.images[indices]`` -> uint8 (n, C, S, S), evaluation preprocessing).
    """

    def __init__(self, info, samples, workers=0):
        self.info, self.samples, self.workers = info, list(samples), workers
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)
        self.masks = None
        self.images = _DecodedImages(self)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        """(normalized image (C, S, S), label) like any torchvision dataset."""
        return self.info.normalize(self.load(index)[None])[0], int(self.labels[index])

    def load(self, index, seed=None, min_crop_area=0.08):
        """Image ``index`` as uint8 (C, S, S): evaluation preprocessing, or with ``seed`` the
        training augmentation drawn from that seed (the same seed, the same crop): a random
        crop of ``min_crop_area`` to all of the image's area, resized, and a random flip."""
        path = self.samples[index][0]
        size = self.info.image_size
        if seed is None:
            return load_image_file(path, self.info, flag="image file", notes=False)
        # Imported here: torchvision costs 2-3 s to import, which a run without a training
        # folder need not pay.
        from torchvision.transforms import RandomResizedCrop
        from torchvision.transforms.v2.functional import horizontal_flip, resized_crop

        image = read_image(path, self.info.channels, flag="image file", notes=False)
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
            torch.manual_seed(seed)
            top, left, height, width = RandomResizedCrop.get_params(
                image, scale=(min_crop_area, 1.0), ratio=(3 / 4, 4 / 3))
            flip = bool(torch.rand(()) < 0.5)
        image = resized_crop(image, top, left, height, width, [size, size], antialias=True)
        return pil_to_uint8(horizontal_flip(image) if flip else image)

    def subset(self, count):
        """The first ``count`` images (all when ``count`` is None)."""
        if count is None or count >= len(self):
            return self
        return FolderDataset(self.info, self.samples[:count], self.workers)

    def spread(self, count):
        """About ``count`` images at an even stride over the split (every class of a split
        sorted by class); all when ``count`` is None or not smaller."""
        if count is None or count >= len(self):
            return self
        return FolderDataset(self.info, self.samples[::len(self) // count], self.workers)

    def batches(self, batch_size, device, generator=None, augment=False, indices=None,
                part=None, min_crop_area=0.08):
        """Yield normalized (inputs, labels) batches on ``device``, decoded by a DataLoader.

        Args:
            generator: shuffles, and seeds the augmentation, when given; None keeps the order.
            augment: random resized crop + flip, one seed per image drawn from ``generator``.
            indices: the images to yield, in this order (default: all).
            part: maps a batch's size to the slice of it to yield (this process's part of a
                global batch); only that part is decoded, with the whole batch's seeds.
            min_crop_area: the smallest fraction of an image's area a random crop covers.
        """
        order = visiting_order(len(self), generator, indices)
        seeds = (torch.randint(2**62, (len(order),), generator=generator) if augment
                 else None)
        positions = torch.arange(len(order)).split(batch_size)
        if part is not None:
            positions = [batch[part(len(batch))] for batch in positions]
        # A process's part of the last batch can be empty; a DataLoader cannot load that.
        empty_last = bool(positions) and len(positions[-1]) == 0
        loader = torch.utils.data.DataLoader(
            _Ordered(self, order, seeds, min_crop_area),
            batch_sampler=[p.tolist() for p in positions[:len(positions) - empty_last]],
            num_workers=self.workers, pin_memory=torch.device(device).type == "cuda")
        iterator = iter(loader)
        try:
            for images, labels in iterator:
                yield (self.info.normalize(images.to(device, non_blocking=True)),
                       labels.to(device, non_blocking=True))
            if empty_last:
                size = self.info.image_size
                empty = torch.zeros(0, self.info.channels, size, size, dtype=torch.uint8)
                yield (self.info.normalize(empty.to(device)),
                       torch.zeros(0, dtype=torch.int64, device=device))
            return
        except UserError as error:  # raised in a worker: keep the worker's own message
            if WORKER_ERROR not in str(error):
                raise
            message = str(error).strip().splitlines()[-1].split(": ", 1)[-1]
            # DataLoader's re-raise leaves a cycle (the exception, its frame, the exception)
            # that would keep the iterator and its worker processes until a garbage
            # collection: clear those frames, so that the workers end with the iterator.
            traceback.clear_frames(error.__traceback__)
        del iterator
        raise UserError(message)


class _Ordered(torch.utils.data.Dataset):
    """The images of a FolderDataset in a given order, each with its augmentation seed."""

    def __init__(self, folder, order, seeds, min_crop_area):
        self.folder, self.order, self.seeds = folder, order.tolist(), seeds
        self.min_crop_area = min_crop_area

    def __len__(self):
        return len(self.order)

    def __getitem__(self, position):
        index = self.order[position]
        seed = None if self.seeds is None else int(self.seeds[position])
        return self.folder.load(index, seed, self.min_crop_area), self.folder.labels[index]


class _DecodedImages:
    """``dataset.images[indices]``: the indexed images decoded (evaluation preprocessing)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        chosen = torch.arange(len(self.folder))[index]
        if chosen.dim() == 0:
            return self.folder.load(int(chosen))
        return torch.stack([self.folder.load(int(i)) for i in chosen.reshape(-1)]).view(
            *chosen.shape, self.folder.info.channels, *(2 * [self.folder.info.image_size]))


def read_folder_split(info, root, split, workers=0):
    """The ``split`` of the class folders in ``root`` as a :class:`FolderDataset` of the model
    described by ``info`` (its classes, size and normalization)."""
    folder = split_folder(root, split)
    classes, samples = find_images(folder)
    mapping = class_mapping(classes, info.classes, folder)
    return FolderDataset(info, [(path, mapping[label]) for path, label in samples], workers)


def folder_classes(root):
    """The class names of ``root``'s training folders (else of its evaluation folders)."""
    split = "train" if (Path(root) / "train").is_dir() else "test"
    return tuple(find_images(split_folder(root, split))[0])
