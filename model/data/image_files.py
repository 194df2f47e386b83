"""Reading one image file as a model's input: upright, in the model's channels and size.

Shared by ``--image`` files (``model.cli.method_inputs``) and the class folders of ``--dataset
imagefolder`` (``model.data.folders``), so that a photo given on the command line and the same
photo in a folder become the same tensor.
"""
import sys
import warnings

import torch

from model.errors import UserError

MAX_IMAGE_PIXELS = 50_000_000  # larger files are refused rather than decoded

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a camera held the picture

CENTER_CROP_FROM = 64  # models for images this large see photos as ImageNet's do: crop, no squash

RESIZE_RATIO = 256 / 224  # ImageNet evaluation: shorter side to 256, central 224 x 224


def load_image_file(path, info, flag="--image", notes=True):
    """Read an image file as uint8 (C, H, W) in the model's channels and size.

    A photo stored sideways with an EXIF orientation tag (as phones do) is first turned
    upright. Colour is converted to grayscale for 1-channel models and grayscale (or a
    palette, alpha or 16-bit image) to RGB for 3-channel ones; another size is resized
    (bilinear, antialiased): squashed to the 28 or 32 px of the small datasets, and for
    models of 64 px and more resized and centre-cropped as ImageNet's evaluation does
    (:func:`resize_center_crop`). With ``notes``, a note on stderr says so. Files over
    ``MAX_IMAGE_PIXELS`` are refused before they are decoded.

    Raises:
        UserError: ``flag path: ...`` for a missing, unreadable, broken or huge file.
    """
    from PIL import Image

    image = read_image(path, info.channels, flag, notes)
    size = (info.image_size, info.image_size)
    if info.image_size >= CENTER_CROP_FROM and image.size != size:
        resized = resize_center_crop(image, info.image_size)
        _note(notes, f"note: resized {path} to {resized.size[0]}x{resized.size[1]} and took "
                     f"the central {size[0]}x{size[1]}")
        image = crop_center(resized, info.image_size)
    elif image.size != size:
        _note(notes, f"note: resized {path} from {image.size[0]}x{image.size[1]} to "
                     f"{size[0]}x{size[1]}")
        image = image.resize(size, Image.Resampling.BILINEAR)
    return pil_to_uint8(image)


def read_image(path, channels, flag="--image", notes=True):
    """Decode an image file into a PIL image upright (EXIF orientation applied) in the mode of
    a ``channels``-channel model ("L" or "RGB")."""
    mode = "L" if channels == 1 else "RGB"
    with _open_image(path, flag) as image:
        if image.mode != mode:
            _note(notes, f"note: converted {path} from {image.mode} to {mode} for the "
                         f"{channels}-channel model")
        return _decode(path, image, mode, flag, notes)


def resize_center_crop(image, size):
    """The first half of ImageNet's evaluation preprocessing: the shorter side resized to
    size * 256 / 224 (bilinear, antialiased); :func:`crop_center` then takes size x size."""
    from PIL import Image

    scale = round(size * RESIZE_RATIO) / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    return image.resize((width, height), Image.Resampling.BILINEAR)


def crop_center(image, size):
    """The central size x size square of a PIL image."""
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_uint8(image):
    """A PIL image ("L" or "RGB") as uint8 (C, H, W)."""
    channels = len(image.getbands())
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], channels).permute(2, 0, 1)


def _note(notes, text):
    if notes:
        print(text, file=sys.stderr)


def _open_image(path, flag):
    """Open an image lazily (header only), refusing what is missing, unreadable or huge."""
    from PIL import Image, UnidentifiedImageError

    limit = f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    try:
        with warnings.catch_warnings():  # our own limit below replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except PermissionError:
        raise UserError(f"{flag} {path}: cannot read it (permission denied)") from None
    except Image.DecompressionBombError:
        raise UserError(f"{flag} {path}: larger than {limit}; shrink it first") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"{flag} {path}: not a readable image ({error})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise UserError(f"{flag} {path}: {width}x{height} is larger than {limit}; shrink it "
                        "first")
    return image


def _decode(path, image, mode, flag, notes):
    """Decode an opened image, upright (EXIF orientation applied), into ``mode``; a UserError
    for a truncated or broken file."""
    from PIL import ImageOps

    try:
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            _note(notes, f"note: turned {path} upright as its EXIF orientation tag says")
        return ImageOps.exif_transpose(image).convert(mode)
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{flag} {path}: not a readable image ({error})") from None
