"""``shapes``: a built-in, offline image dataset with a ground-truth object mask per image.

Each 32x32 RGB image shows one object of a known class (circle, square, triangle, cross, ring,
bar) with random position, size, colour and orientation on a cluttered background: a colour
gradient, thin distractor strokes of random colour, and pixel noise over everything. The
distractors are drawn independently of the class, so they carry no label information; they
make the task hard enough for the 16-filter ``simple`` net not to solve it perfectly. The mask
marks the object's pixels exactly, so later scripts can measure whether an explanation points
at the object (pointing game, Zhang et al. 2016).

Generation is two steps, both vectorized over images: :func:`sample_scenes` draws every random
number from a seeded generator, and :func:`render_scenes` turns them into pixels without any
randomness. Rendering the same scenes without their objects therefore changes exactly the
masked pixels, which is how the tests check the masks.
"""
import math

import torch

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar")

IMAGE_SIZE = 32

TRAIN_SIZE, TEST_SIZE = 20_000, 2_000

TRAIN_SEED, TEST_SEED = 2014, 2016

NUM_STROKES = 3

STROKE_HALF_WIDTH = 0.6  # pixels: strokes are about one pixel thick, thinner than any bar

NOISE_STD = 0.06

MIN_RADIUS, MAX_RADIUS = 5.0, 9.5

EXTENT = 1.21  # farthest point of any shape, in radii (the corner of the square)

_CHUNK = 2048  # images rendered at once: bounds the (N, strokes, H, W) temporaries


def sample_scenes(num_images, seed):
    """Draw every random quantity of ``num_images`` scenes from a generator seeded with ``seed``.

    Returns:
        dict of tensors: ``labels`` (N,), ``center`` (N, 2) as (x, y) pixels, ``radius`` (N,),
        ``angle`` (N,), ``object_color`` (N, 3), ``background_color`` (N, 3), ``gradient``
        (N, 2, 3) per-axis colour slopes, ``stroke_ends`` (N, S, 2, 2), ``stroke_color``
        (N, S, 3) and ``noise`` (N, 3, H, W).
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    # Balanced classes in random order.
    labels = torch.arange(num_images) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(num_images, generator=generator)]
    radius = uniform(num_images, low=MIN_RADIUS, high=MAX_RADIUS)
    margin = EXTENT * radius + 1.0  # one pixel clear of the border: the whole shape is in view
    center = margin[:, None] + uniform(num_images, 2) * (IMAGE_SIZE - 2 * margin[:, None])
    background_color = uniform(num_images, 3, low=0.1, high=0.9)
    # Each object channel sits 0.3 to 0.7 away from the background's (mod 1), so every object
    # stands out in colour, but no colour identifies a class.
    object_color = (background_color + uniform(num_images, 3, low=0.3, high=0.7)) % 1.0
    return {
        "labels": labels,
        "center": center,
        "radius": radius,
        "angle": uniform(num_images, low=0.0, high=2 * math.pi),
        "object_color": object_color,
        "background_color": background_color,
        "gradient": uniform(num_images, 2, 3, low=-0.2, high=0.2) / IMAGE_SIZE,
        "stroke_ends": uniform(num_images, NUM_STROKES, 2, 2, low=-4.0, high=IMAGE_SIZE + 4.0),
        "stroke_color": uniform(num_images, NUM_STROKES, 3),
        "noise": NOISE_STD * torch.randn(num_images, 3, IMAGE_SIZE, IMAGE_SIZE,
                                         generator=generator),
    }


def shape_masks(labels, center, radius, angle, size=IMAGE_SIZE):
    """Boolean masks (N, size, size) of each object, from its class and pose.

    Each pixel centre is mapped into the object's frame, (u, v) = R(-angle)(p - center) / radius,
    where every shape is a fixed set around the origin with extent <= ``EXTENT``.
    """
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords[None, None, :] - center[:, 0, None, None]  # (N, 1, W)
    dy = coords[None, :, None] - center[:, 1, None, None]  # (N, H, 1)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]  # (N, H, W)
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    r = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    # Triangle: equilateral, scaled by 1.2 so its area is close to the other shapes'.
    tu, tv = u / 1.2, v / 1.2
    candidates = torch.stack([
        r <= 1.0,                                                         # circle
        torch.maximum(au, av) <= 0.85,                                    # square
        (tv >= -0.5) & (tv <= 1.0 - math.sqrt(3.0) * tu.abs()),           # triangle
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),        # cross
        (r <= 1.0) & (r >= 0.55),                                         # ring
        (au <= 1.0) & (av <= 0.3),                                        # bar
    ], dim=1)  # (N, classes, H, W)
    return candidates[torch.arange(len(labels)), labels]


def _stroke_masks(stroke_ends, size=IMAGE_SIZE):
    """(N, size, size) masks of pixels within ``STROKE_HALF_WIDTH`` of any stroke segment,
    and (N, S, size, size) per-stroke masks."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    px = coords[None, None, None, :]  # (1, 1, 1, W)
    py = coords[None, None, :, None]  # (1, 1, H, 1)
    start, end = stroke_ends[:, :, 0], stroke_ends[:, :, 1]  # (N, S, 2)
    direction = end - start
    length_sq = (direction ** 2).sum(-1).clamp_min(1e-6)[..., None, None]  # (N, S, 1, 1)
    sx, sy = start[..., 0, None, None], start[..., 1, None, None]
    ddx, ddy = direction[..., 0, None, None], direction[..., 1, None, None]
    # Distance from each pixel to the closest point of the segment.
    t = (((px - sx) * ddx + (py - sy) * ddy) / length_sq).clamp(0.0, 1.0)  # (N, S, H, W)
    distance_sq = (px - sx - t * ddx) ** 2 + (py - sy - t * ddy) ** 2
    return distance_sq <= STROKE_HALF_WIDTH ** 2


def render_scenes(scenes, with_objects=True):
    """Render sampled scenes deterministically.

    Args:
        scenes: the dict from :func:`sample_scenes`.
        with_objects: False renders the background, strokes and noise alone.

    Returns:
        images (N, 3, H, W) uint8, masks (N, H, W) bool.
    """
    size = IMAGE_SIZE
    coords = torch.arange(size, dtype=torch.float32) - size / 2
    gradient = scenes["gradient"]  # (N, 2, 3): colour change per pixel along x and along y
    image = (scenes["background_color"][:, :, None, None]
             + gradient[:, 0, :, None, None] * coords[None, None, None, :]
             + gradient[:, 1, :, None, None] * coords[None, None, :, None])  # (N, 3, H, W)
    strokes = _stroke_masks(scenes["stroke_ends"], size)  # (N, S, H, W)
    for index in range(strokes.shape[1]):  # later strokes are drawn over earlier ones
        color = scenes["stroke_color"][:, index, :, None, None]  # (N, 3, 1, 1)
        image = torch.where(strokes[:, None, index], color, image)
    masks = shape_masks(scenes["labels"], scenes["center"], scenes["radius"], scenes["angle"],
                        size)
    if with_objects:
        image = torch.where(masks[:, None], scenes["object_color"][:, :, None, None], image)
    image = (image + scenes["noise"]).clamp(0.0, 1.0)
    return (image * 255.0).round().to(torch.uint8), masks


def generate_shapes(num_images, seed, first=None):
    """Generate ``num_images`` images of the shapes dataset from ``seed``; with ``first``,
    only the first ``first`` of them.

    Every scene is sampled, so that the first images are those of the whole split, and they
    are rendered in the whole split's chunks of ``_CHUNK`` (the last one cut), so that each is
    computed exactly as there, by the same operations on the same shapes.

    Returns:
        images (N, 3, 32, 32) uint8, labels (N,) int64, masks (N, 32, 32) bool; N is
        ``num_images``, or ``first`` when it is smaller.
    """
    scenes = sample_scenes(num_images, seed)
    count = num_images if first is None else max(0, min(first, num_images))
    images = [torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)]
    masks = [torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)]
    for start in range(0, count, _CHUNK):
        chunk = {key: value[start:start + _CHUNK] for key, value in scenes.items()}
        chunk_images, chunk_masks = render_scenes(chunk)
        images.append(chunk_images)
        masks.append(chunk_masks)
    return torch.cat(images)[:count], scenes["labels"][:count], torch.cat(masks)[:count]
