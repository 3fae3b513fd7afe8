"""Decoding of untrusted uploads (resbackbones/demo/images.py): every mode, every failure."""
import io

import numpy as np
import pytest
from detectron2.data import transforms as T
from PIL import Image

from resbackbones.demo.images import ImageDecodeError, decode_image, inference_size


def _encode(image: Image.Image, format: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=2).astype(np.uint8)


def test_rgb_png_roundtrip_is_exact():
    rgb = _gradient()
    decoded = decode_image(_encode(Image.fromarray(rgb)))
    np.testing.assert_array_equal(decoded.rgb, rgb)
    assert decoded.original_size == (64, 48) and not decoded.downscaled and decoded.notes == ()


def test_grayscale_becomes_three_equal_channels():
    gray = _gradient()[:, :, 0]
    decoded = decode_image(_encode(Image.fromarray(gray, mode="L")))
    assert decoded.rgb.shape == (48, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.rgb[:, :, channel], gray)


def test_rgba_is_composited_on_white():
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red
    rgba[:, 10:] = (0, 0, 255, 0)  # fully transparent blue
    decoded = decode_image(_encode(Image.fromarray(rgba, mode="RGBA")))
    np.testing.assert_array_equal(decoded.rgb[:, :10], np.full((10, 10, 3), (255, 0, 0)))
    np.testing.assert_array_equal(decoded.rgb[:, 10:], np.full((10, 10, 3), 255))
    assert any("transparency" in note for note in decoded.notes)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_is_scaled_not_clipped(mode):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values.astype(np.int32))
    assert image.mode == mode
    # Pillow writes 16-bit PNGs from I;16 and (deprecated for PNG) 32-bit "I" images to TIFF.
    decoded = decode_image(_encode(image, format="PNG" if mode == "I;16" else "TIFF"))
    np.testing.assert_array_equal(decoded.rgb[0, :, 0], [0, 1, 128, 255])
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (1, 4, 3)


def test_float_image_in_unit_range():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    decoded = decode_image(_encode(Image.fromarray(values, mode="F"), format="TIFF"))
    np.testing.assert_array_equal(decoded.rgb[0, :, 1], [0, 128, 255])


def test_palette_with_transparency():
    image = Image.new("P", (8, 4), 0)
    image.putpalette([0, 255, 0] + [255, 0, 255] * 255)
    image.paste(1, (4, 0, 8, 4))
    image.info["transparency"] = 1
    decoded = decode_image(_encode(image, transparency=1))
    np.testing.assert_array_equal(decoded.rgb[:, :4], np.full((4, 4, 3), (0, 255, 0)))
    np.testing.assert_array_equal(decoded.rgb[:, 4:], np.full((4, 4, 3), 255))


def test_cmyk_jpeg_matches_pillow_conversion():
    cmyk = Image.fromarray(_gradient()).convert("CMYK")
    data = _encode(cmyk, format="JPEG", quality=95)
    decoded = decode_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decoded.rgb, expected)


def test_exif_orientation_is_applied():
    rgb = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = _encode(Image.fromarray(rgb), format="JPEG", exif=exif, quality=100)
    decoded = decode_image(data)
    assert decoded.rgb.shape == (64, 48, 3)
    assert decoded.original_size == (48, 64)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decoded.rgb, np.rot90(stored, k=-1))


@pytest.mark.parametrize("size", [(4000, 3000), (1000, 6000)])
def test_large_image_is_downscaled_to_test_size(size):
    image = Image.fromarray(_gradient(64, 48)).resize(size)
    decoded = decode_image(_encode(image, format="JPEG"), max_size=(800, 1333))
    reference = T.ResizeShortestEdge([800, 800], 1333).get_transform(
        np.zeros((size[1], size[0], 3), np.uint8))
    assert decoded.rgb.shape[:2] == (reference.new_h, reference.new_w)
    assert decoded.original_size == size and decoded.downscaled
    assert "downscaled from" in decoded.notes[0]


@pytest.mark.parametrize("width,height,min_size,max_size", [
    (640, 480, 800, 1333), (300, 200, 128, 192), (5000, 100, 800, 1333), (17, 1000, 64, 100)])
def test_inference_size_matches_detectron2(width, height, min_size, max_size):
    transform = T.ResizeShortestEdge([min_size, min_size], max_size).get_transform(
        np.zeros((height, width, 3), np.uint8))
    assert inference_size(width, height, min_size, max_size) == (transform.new_w, transform.new_h)


def test_small_image_is_not_upscaled_at_decode():
    decoded = decode_image(_encode(Image.fromarray(_gradient(64, 48))), max_size=(800, 1333))
    assert decoded.rgb.shape == (48, 64, 3)


_NOISY_PNG = _encode(Image.fromarray(
    np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)))


@pytest.mark.parametrize("data,expected", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image at all", "not an image"),
    (_NOISY_PNG[: len(_NOISY_PNG) // 2], "truncated or corrupted"),
    (_NOISY_PNG[:40], "not an image"),  # cut inside the header: unidentifiable
    (_encode(Image.fromarray(_gradient()), format="JPEG")[:300], "truncated or corrupted"),
], ids=["empty", "pdf", "png-half", "png-header", "jpeg-cut"])
def test_bad_bytes_give_a_readable_error(data, expected):
    with pytest.raises(ImageDecodeError, match=expected) as info:
        decode_image(data, name="photo.png")
    assert "photo.png" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decompression_bomb_protection_is_kept(monkeypatch):
    data = _encode(Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="too large to decode safely"):
        decode_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # warning range: refused as well
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data)


def test_missing_path_does_not_crash(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        decode_image(tmp_path / "missing.png", name="missing.png")


def _animated_gif() -> bytes:
    frames = [Image.new("P", (50, 40), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _rgb48_png() -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", np.full((10, 12, 3), 32896, np.uint16))
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("data,shape,pixel", [
    (_encode(Image.new("1", (30, 20), 1)), (20, 30, 3), [255, 255, 255]),
    (_encode(Image.new("LA", (30, 20), (100, 0))), (20, 30, 3), [255, 255, 255]),
    (_animated_gif(), (40, 50, 3), None),  # first frame
    (_rgb48_png(), (10, 12, 3), [128, 128, 128]),  # 16 bits per channel RGB
], ids=["bilevel", "gray-alpha", "animated-gif", "rgb48"])
def test_other_modes(data, shape, pixel):
    decoded = decode_image(data)
    assert decoded.rgb.shape == shape and decoded.rgb.dtype == np.uint8
    if pixel is not None:
        np.testing.assert_array_equal(decoded.rgb[0, 0], pixel)
