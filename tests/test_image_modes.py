"""Every PIL mode reaches the model as the 8-bit RGB picture the file holds (issue 14, point 1).

Expected pixels are computed here from the stored values and the documented rule (model/image.py
`to_rgb8`), not by asking PIL's converter that clips 16-bit to white and float to black.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flexeval.benchmarks.base import open_image
from flexeval.model.image import PAD_COLOR, preprocess, to_rgb8

BG = np.array(PAD_COLOR, dtype=np.float64)


def _rgb(img: Image.Image) -> np.ndarray:
    out = to_rgb8(img, PAD_COLOR)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out).astype(np.int64)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.int64)[..., None], 3, axis=-1)


def _roundtrip(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return open_image(buf.getvalue())


def test_one_bit_and_grey_repeat_the_value():
    bits = Image.fromarray(np.array([[0, 1, 1, 0]], dtype=bool))
    assert bits.mode == "1"
    assert (_rgb(bits) == _grey([[0, 255, 255, 0]])).all()
    grey = np.array([[0, 17, 128, 255]], dtype=np.uint8)
    assert (_rgb(Image.fromarray(grey, "L")) == _grey(grey)).all()


def test_sixteen_bit_png_and_tiff_scale_by_the_type_range():
    values = np.array([[0, 257, 12000, 32768, 65535]], dtype=np.uint16)
    want = _grey(np.rint(values / 65535 * 255))  # 0, 1, 47, 128, 255: not PIL's clip to white
    for fmt in ("PNG", "TIFF"):
        img = _roundtrip(Image.fromarray(values), fmt)
        assert img.mode == "I;16", fmt  # open_image keeps the 16 bits for the model side
        assert (_rgb(img) == want).all(), fmt
    big_endian = Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes())
    assert (_rgb(big_endian) == want).all()


def test_an_eight_bit_picture_stored_as_sixteen_bit_gives_back_its_pixels():
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, size=(6, 9), dtype=np.uint8)
    sixteen = _roundtrip(Image.fromarray(eight.astype(np.uint16) * 257), "TIFF")
    assert (_rgb(sixteen) == _grey(eight)).all()


def test_int32_and_float_take_the_first_range_that_holds_them():
    as_8bit = np.array([[0, 10, 255]], dtype=np.int32)
    assert (_rgb(Image.fromarray(as_8bit, "I")) == _grey(as_8bit)).all()
    as_16bit = np.array([[0, 1000, 65535]], dtype=np.int32)
    assert (_rgb(Image.fromarray(as_16bit, "I")) == _grey(np.rint(as_16bit / 65535 * 255))).all()
    signed = np.array([[-100, 0, 300]], dtype=np.int32)  # no standard range: its own min..max
    assert (_rgb(Image.fromarray(signed, "I")) == _grey(np.rint((signed + 100) / 400 * 255))).all()

    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    img = _roundtrip(Image.fromarray(unit, "F"), "TIFF")
    assert img.mode == "F"
    assert (_rgb(img) == _grey(np.rint(unit * 255))).all()  # 0, 64, 128, 255: not PIL's black
    wide = np.array([[0.0, 100.0, 200.0]], dtype=np.float32)
    assert (_rgb(Image.fromarray(wide, "F")) == _grey([[0, 100, 200]])).all()
    odd = np.array([[-2.0, 0.0, 2.0, np.nan]], dtype=np.float32)
    assert (_rgb(Image.fromarray(odd, "F")) == _grey([[0, 128, 255, 0]])).all()


def test_alpha_is_composited_on_the_pad_colour():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128], [10, 200, 30, 64]]], dtype=np.uint8)
    got = _rgb(Image.fromarray(rgba, "RGBA"))
    a = rgba[..., 3:4] / 255
    want = rgba[..., :3] * a + BG * (1 - a)
    assert np.abs(got - want).max() <= 1
    assert tuple(got[0, 0]) == (255, 0, 0) and tuple(got[0, 1]) == PAD_COLOR  # opaque kept, clear = padding

    la = np.array([[[200, 255], [200, 0], [40, 100]]], dtype=np.uint8)
    got = _rgb(Image.fromarray(la, "LA"))
    a = la[..., 1:2] / 255
    assert np.abs(got - (la[..., :1] * a + BG * (1 - a))).max() <= 1
    assert tuple(got[0, 1]) == PAD_COLOR


def test_palette_images_look_up_colours_and_their_transparency():
    palette = [0, 0, 0, 250, 10, 20, 30, 240, 60] + [0] * (256 * 3 - 9)
    p = Image.frombytes("P", (3, 1), bytes([0, 1, 2]))
    p.putpalette(palette)
    assert (_rgb(p) == np.array([[[0, 0, 0], [250, 10, 20], [30, 240, 60]]])).all()
    clear = _roundtrip(p, "PNG", transparency=1)  # index 1 is fully transparent (tRNS)
    assert clear.mode == "P"
    assert [tuple(x) for x in _rgb(clear)[0]] == [(0, 0, 0), PAD_COLOR, (30, 240, 60)]

    pa = Image.new("PA", (2, 1))
    pa.putpalette(palette)
    pa.putdata([(1, 255), (2, 0)])
    assert [tuple(x) for x in _rgb(pa)[0]] == [(250, 10, 20), PAD_COLOR]


def test_cmyk_and_ycbcr_by_their_formulas():
    cmyk = np.array([[[51, 102, 0, 64], [0, 0, 0, 0], [255, 0, 0, 0]]], dtype=np.uint8)
    got = _rgb(Image.fromarray(cmyk, "CMYK"))
    c = cmyk.astype(np.float64)
    want = 255 * (1 - c[..., :3] / 255) * (1 - c[..., 3:] / 255)
    assert np.abs(got - want).max() <= 1

    ycc = np.array([[[100, 90, 200], [128, 128, 128], [235, 128, 128]]], dtype=np.uint8)
    got = _rgb(Image.fromarray(ycc, "YCbCr"))
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    want = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                     y + 1.772 * (cb - 128)], axis=-1).clip(0, 255)
    assert np.abs(got - want).max() <= 1


def test_a_multi_page_tiff_gives_its_first_page():
    first = Image.fromarray(np.full((4, 4), 30, dtype=np.uint8))
    second = Image.fromarray(np.full((4, 4), 220, dtype=np.uint8))
    buf = io.BytesIO()
    first.save(buf, format="TIFF", save_all=True, append_images=[second])
    img = open_image(buf.getvalue())
    assert getattr(img, "n_frames", 1) == 2
    assert (_rgb(img) == 30).all()


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_the_model_input_of_a_sixteen_bit_file_is_that_of_its_eight_bit_copy(mode):
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    grey8 = eight[..., 0]
    from_16 = preprocess(_roundtrip(Image.fromarray(grey8.astype(np.uint16) * 257), "PNG"), 56, mode)
    from_8 = preprocess(Image.fromarray(grey8, "L"), 56, mode)
    assert from_16.pixels.abs().max() > 0 and bool((from_16.pixels == from_8.pixels).all())
    # An RGBA picture's clear half is the padding colour, as the padding itself.
    rgba = np.concatenate([eight, np.zeros((40, 60, 1), np.uint8)], axis=-1)
    rgba[:, :30, 3] = 255
    mixed = preprocess(Image.fromarray(rgba, "RGBA"), 56, mode)
    plain = np.array(eight)
    plain[:, 30:] = PAD_COLOR
    assert bool((mixed.pixels == preprocess(Image.fromarray(plain, "RGB"), 56, mode).pixels).all())
