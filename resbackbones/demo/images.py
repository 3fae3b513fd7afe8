"""Decode untrusted image bytes into the RGB array a detector expects.

Why: an upload can be anything (a PDF renamed ``.png``, a truncated file, a 16-bit scan, a
palette GIF with transparency, a 100-megapixel photo). Detectron2's ``read_image`` assumes a
well-formed 8-bit image, so a demo built on it either crashes or silently shows garbage. Here
every failure becomes an :class:`ImageDecodeError` (a ``ValueError``) whose message can be shown
to the user as is, every mode is converted to 8-bit RGB explicitly, and very large images are
downscaled before any full-size array exists. Pillow's ``Image.MAX_IMAGE_PIXELS``
decompression-bomb limit is kept as it is.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DecodedImage",
    "ImageDecodeError",
    "decode_image",
    "inference_size",
    "to_rgb_array",
]

# Modes whose pixels are wider than 8 bits: Pillow's convert("RGB") clips them instead of scaling.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
    """An input could not be turned into an image; the message is meant for the end user."""


@dataclass
class DecodedImage:
    """An image ready for a detector, with what was done to it.

    Attributes:
        rgb: ``uint8`` array of shape (H, W, 3), RGB order.
        original_size: (width, height) of the stored image, after EXIF orientation.
        source_mode: the Pillow mode of the file (``"I;16"``, ``"P"``, ``"RGBA"``, ...).
        notes: human-readable remarks on conversions (16-bit scaled, downscaled, ...).
    """

    rgb: np.ndarray
    original_size: Tuple[int, int]
    source_mode: str
    notes: Tuple[str, ...] = ()

    @property
    def downscaled(self) -> bool:
        """Whether ``rgb`` is smaller than the stored image."""
        return (self.rgb.shape[1], self.rgb.shape[0]) != tuple(self.original_size)


def inference_size(width: int, height: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Size (width, height) that Detectron2's test-time ``ResizeShortestEdge`` would produce.

    Args:
        width, height: input size.
        min_size: ``INPUT.MIN_SIZE_TEST`` (0 means no resizing in Detectron2; only ``max_size``
            then bounds the longer side here).
        max_size: ``INPUT.MAX_SIZE_TEST``.

    Returns:
        (width, height) after resizing.
    """
    # Detectron2's arithmetic step by step (ResizeShortestEdge.get_output_shape): the shorter
    # side set exactly, then both sides scaled; a size computed another way can round one pixel
    # off, and the model would then see other pixels than Detectron2's DefaultPredictor feeds it.
    new_width, new_height = float(width), float(height)
    if min_size > 0:
        scale = min_size * 1.0 / min(width, height)
        if height < width:
            new_height, new_width = float(min_size), scale * width
        else:
            new_height, new_width = scale * height, float(min_size)
    if max_size > 0 and max(new_height, new_width) > max_size:
        scale = max_size * 1.0 / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return max(1, int(new_width + 0.5)), max(1, int(new_height + 0.5))


def _scale_wide_to_uint8(image: Image.Image) -> Tuple[np.ndarray, str]:
    """Map a 16/32-bit integer or float single-channel image to 8 bits, keeping its contrast."""
    array = np.asarray(image)
    if array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return (np.nan_to_num(array) * 255.0 + 0.5).astype(np.uint8), "float scaled from [0, 1]"
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    elif image.mode.startswith("I;16") or (array.size and 255 < array.max() <= 65535
                                           and array.min() >= 0):
        return (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8), "16-bit scaled to 8-bit"
    else:
        if not array.size or (array.min() >= 0 and array.max() <= 255):
            return array.astype(np.uint8), "32-bit integer holding 8-bit values"
        low, high = float(array.min()), float(array.max())
    span = high - low if high > low else 1.0
    scaled = (np.nan_to_num(array.astype(np.float64)) - low) / span * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8), f"values {low:g}..{high:g} stretched"


def to_rgb_array(image: Image.Image) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """Convert a loaded Pillow image of any mode to an RGB ``uint8`` array.

    Transparent pixels are composited on white (what a viewer shows), palette images keep their
    transparency, wide single-channel images are scaled rather than clipped.

    Returns:
        The array and notes describing non-trivial conversions.
    """
    mode = image.mode
    notes = []
    if mode in _WIDE_MODES:
        gray, note = _scale_wide_to_uint8(image)
        notes.append(note)
        return np.repeat(gray[:, :, None], 3, axis=2), tuple(notes)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
        notes.append("transparency composited on white")
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as err:
            raise ImageDecodeError(
                f"Cannot convert an image of mode {mode!r} to RGB ({err}). "
                "Save it as an 8-bit RGB or grayscale PNG/JPEG and try again."
            ) from err
        if mode not in ("L", "1"):
            notes.append(f"converted from {mode}")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), tuple(notes)


def _open(source: Union[bytes, str, os.PathLike, Image.Image], name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if not isinstance(source, (bytes, bytearray, memoryview)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ImageDecodeError(f"{name}: no such file.")
        with open(path, "rb") as f:  # read here so that no error message carries a path
            source = f.read()
    if len(source) == 0:
        raise ImageDecodeError(f"{name} is empty (0 bytes): upload an image file.")
    stream = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; treat it like the error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(
            f"{name} is too large to decode safely ({err}). Resize it below "
            f"{Image.MAX_IMAGE_PIXELS} pixels and try again."
        ) from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            f"{name} is not an image Pillow can read (supported: JPEG, PNG, BMP, GIF, TIFF, "
            "WebP, ...). Upload an image file."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"{name} is truncated or corrupted and could not be opened as an image ({err}). "
            "Re-export the image and try again."
        ) from err


def decode_image(
    source: Union[bytes, str, os.PathLike, Image.Image],
    max_size: Optional[Tuple[int, int]] = None,
    name: str = "The file",
) -> DecodedImage:
    """Decode an image file or bytes into an RGB array, robustly.

    Args:
        source: encoded bytes, a file path, or an already opened Pillow image.
        max_size: ``(min_size, max_size)`` of the model's test-time resize
            (``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``). An image larger than that size
            is downscaled to it while decoding (JPEG decodes directly at a reduced scale), so a
            huge photo never becomes a huge array: the size Detectron2's resize gives, with the
            same bilinear filter, so that the model sees the pixels it would have seen (for a
            reduction under 3x and no JPEG draft: the same pixels). ``original_size`` keeps
            the input's size, to map detections back to its pixels. ``None`` keeps the full
            size.
        name: how to refer to the input in error messages (never a server path).

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: the input is empty, not an image, truncated or corrupted, a
            decompression bomb, or of a mode that cannot be converted.
    """
    image = _open(source, name)
    try:
        source_mode = image.mode
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:  # a malformed EXIF block should not cost the user the image
            orientation = 1
        stored_size = image.size
        # EXIF orientations 5-8 swap width and height once applied.
        original_size = stored_size[::-1] if orientation in (5, 6, 7, 8) else stored_size
        notes = []
        target = inference_size(*original_size, *max_size) if max_size else original_size
        if target[0] < original_size[0] and image.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale: a 50-megapixel photo never exists at full size.
            draft_target = target[::-1] if orientation in (5, 6, 7, 8) else target
            image.draft("RGB", draft_target)
        if orientation != 1:
            # Phones store portrait photos sideways and flag the rotation in EXIF.
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a malformed EXIF block should not cost the user the image
                pass
        if target[0] < original_size[0]:
            if image.mode in _WIDE_MODES or image.mode in ("P", "1"):
                image = Image.fromarray(to_rgb_array(image)[0])
            image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
            notes.append(f"downscaled from {original_size[0]}x{original_size[1]} to "
                         f"{target[0]}x{target[1]} (the model's test size)")
        image.load()
        rgb, conversion_notes = to_rgb_array(image)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(
            f"{name} is truncated or corrupted and could not be decoded ({err}). "
            "Re-export the image and try again."
        ) from err
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(f"{name} decoded to an unusable array of shape {rgb.shape}.")
    return DecodedImage(rgb=rgb, original_size=original_size, source_mode=source_mode,
                        notes=tuple(notes) + conversion_notes)
