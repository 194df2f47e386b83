import torch

from model.data.shapes import (
    IMAGE_SIZE,
    SHAPE_CLASSES,
    generate_shapes,
    render_scenes,
    sample_scenes,
    shape_masks,
)


def test_same_seed_same_arrays_other_seed_other_arrays():
    images, labels, masks = generate_shapes(64, seed=7)
    again = generate_shapes(64, seed=7)
    other = generate_shapes(64, seed=8)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    assert torch.equal(masks, again[2])
    assert not torch.equal(images, other[0])


def test_the_first_images_alone_are_those_of_the_whole_split():
    """``first`` renders the first images only (a quick run's training images), the same
    images as the whole split's: the scenes of the whole split, rendered in its chunks. Equal
    to the bit: the same operations on the same chunk, in one process."""
    whole = generate_shapes(2100, seed=5)  # two chunks: 2048 and 52 images
    for first in (0, 7, 2049):
        part = generate_shapes(2100, seed=5, first=first)
        assert all(torch.equal(a[:first], b) for a, b in zip(whole, part)), first
    assert all(torch.equal(a, b) for a, b in zip(whole, generate_shapes(2100, 5, first=3000)))


def test_load_dataset_keeps_the_first_images(shapes_test_split):
    from model.data.datasets import load_dataset

    first = load_dataset("shapes", "test", first=10)
    assert torch.equal(first.images, shapes_test_split.images[:10])
    assert torch.equal(first.labels, shapes_test_split.labels[:10])
    assert torch.equal(first.masks, shapes_test_split.masks[:10])


def test_format_and_balanced_classes():
    images, labels, masks = generate_shapes(120, seed=1)
    assert images.shape == (120, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.uint8
    assert masks.shape == (120, IMAGE_SIZE, IMAGE_SIZE) and masks.dtype == torch.bool
    assert len(SHAPE_CLASSES) >= 6
    assert torch.bincount(labels, minlength=len(SHAPE_CLASSES)).tolist() == [20] * 6


def test_mask_covers_exactly_the_drawn_object():
    """Removing the objects changes pixels inside the masks only, and nearly all of them."""
    scenes = sample_scenes(300, seed=3)
    with_objects, masks = render_scenes(scenes)
    without_objects, _ = render_scenes(scenes, with_objects=False)
    changed = (with_objects != without_objects).any(dim=1)  # (N, H, W)
    assert not changed[~masks].any()
    # Inside the mask a pixel can stay the same only where noise clips both versions alike.
    assert changed[masks].float().mean() > 0.97
    areas = masks.flatten(1).sum(1)
    assert areas.min() >= 20  # every object is visible


def test_masks_match_shape_geometry():
    """A circle of radius r covers about pi r^2 pixels; a square of half side 0.85 r, (1.7 r)^2."""
    count = 6
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    center = torch.full((count, 2), 16.0)
    radius = torch.full((count,), 8.0)
    masks = shape_masks(labels, center, radius, torch.zeros(count))
    areas = masks.flatten(1).sum(1).float()
    assert abs(areas[0] - torch.pi * 64) / (torch.pi * 64) < 0.05
    assert abs(areas[1] - (1.7 * 8) ** 2) / (1.7 * 8) ** 2 < 0.1
    assert masks[0, 16, 16] and not masks[0, 0, 0]


def test_ring_has_a_hole_and_objects_stay_inside_the_image():
    scenes = sample_scenes(500, seed=5)
    _, masks = render_scenes(scenes)
    rings = scenes["labels"] == SHAPE_CLASSES.index("ring")
    cx, cy = scenes["center"][rings].floor().long().unbind(1)  # pixel i spans [i, i+1)
    assert not masks[rings][torch.arange(int(rings.sum())), cy, cx].any()
    # No object touches the border: the margin keeps the whole shape in view.
    rows_and_columns = (masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1])
    assert not any(edge.any() for edge in rows_and_columns)
