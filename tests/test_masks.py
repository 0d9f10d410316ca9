"""Mask files in and out: binary, grey ids, palette and colour PNGs; resizing; palette PNGs written back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.errors import VosError
from vosctl.masks import fit_mask, read_mask, write_palette_png
from vosctl.palette import davis_palette


def blob_ids(height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W) uint8: object 1 on the left, object 3 on the right, background elsewhere."""
    ids = np.zeros((height, width), dtype=np.uint8)
    ids[8:24, 4:20] = 1
    ids[20:40, 36:60] = 3
    return ids


def save_palette_png(path, ids: np.ndarray, palette: np.ndarray) -> None:
    image = Image.fromarray(ids, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(path)


@pytest.mark.parametrize("high", [255, 1])
def test_binary_grey_png_is_one_object(tmp_path, high):
    grey = (blob_ids() > 0).astype(np.uint8) * high
    Image.fromarray(grey, mode="L").save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.object_ids == [1]
    assert np.array_equal(mask.ids, (grey > 0).astype(np.uint8))
    assert np.array_equal(mask.palette, davis_palette())
    assert mask.notes == []


def test_sixteen_bit_binary_png_is_one_object(tmp_path):
    grey = (blob_ids() > 0).astype(np.uint16) * 65535
    Image.fromarray(grey).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").object_ids == [1]


def test_grey_png_with_a_few_levels_keeps_them_as_ids(tmp_path):
    Image.fromarray(blob_ids(), mode="L").save(tmp_path / "ids.png")
    assert read_mask(tmp_path / "ids.png").object_ids == [1, 3]


def test_soft_grey_mask_is_thresholded_with_a_note(tmp_path):
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # 64 grey levels
    Image.fromarray(ramp, mode="L").save(tmp_path / "soft.png")
    mask = read_mask(tmp_path / "soft.png")
    assert mask.object_ids == [1]
    assert np.array_equal(mask.ids, (ramp >= 128).astype(np.uint8))
    assert any("threshold" in note for note in mask.notes)


def test_palette_png_keeps_ids_and_palette(tmp_path):
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1] = (10, 200, 30)
    palette[3] = (250, 120, 5)
    ids = blob_ids()
    save_palette_png(tmp_path / "p.png", ids, palette)
    mask = read_mask(tmp_path / "p.png")
    assert mask.object_ids == [1, 3]
    assert np.array_equal(mask.ids, ids)
    assert mask.palette.shape == (256, 3)
    assert tuple(mask.palette[1]) == (10, 200, 30) and tuple(mask.palette[3]) == (250, 120, 5)


def test_rgb_png_with_two_colours_is_two_objects(tmp_path):
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    ids = blob_ids()
    rgb[ids == 1] = (17, 99, 201)
    rgb[ids == 3] = (240, 200, 10)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    mask = read_mask(tmp_path / "c.png")
    assert len(mask.object_ids) == 2
    # One id per colour, the same pixels, and the palette gives each id its colour back.
    assert len(np.unique(mask.ids[ids == 1])) == 1 and len(np.unique(mask.ids[ids == 3])) == 1
    assert np.array_equal(mask.ids > 0, ids > 0)
    assert np.array_equal(mask.palette[mask.ids], rgb)


def test_rgb_png_in_davis_colours_maps_to_palette_indices(tmp_path):
    davis = davis_palette()
    ids = blob_ids()
    ids[ids == 1] = 2
    ids[ids == 3] = 5
    Image.fromarray(davis[ids], mode="RGB").save(tmp_path / "davis.png")
    mask = read_mask(tmp_path / "davis.png")
    assert mask.object_ids == [2, 5]
    assert np.array_equal(mask.ids, ids)


def test_fit_mask_resizes_same_aspect_nearest_with_a_note(tmp_path):
    ids = blob_ids(48, 64)
    save_palette_png(tmp_path / "p.png", ids, davis_palette())
    mask = read_mask(tmp_path / "p.png")
    fitted = fit_mask(mask, 96, 128)
    assert fitted.ids.shape == (96, 128)
    assert set(np.unique(fitted.ids).tolist()) == {0, 1, 3}  # nearest: no blended ids
    assert np.array_equal(fitted.ids[::2, ::2], ids)
    assert any("resized" in note and "64x48" in note for note in fitted.notes)
    assert fit_mask(mask, 48, 64) is mask


def test_fit_mask_rejects_a_different_aspect(tmp_path):
    save_palette_png(tmp_path / "p.png", blob_ids(48, 64), davis_palette())
    with pytest.raises(VosError, match="different shape"):
        fit_mask(read_mask(tmp_path / "p.png"), 64, 64)


def test_not_an_image_or_missing_mask_is_a_vos_error(tmp_path):
    text = tmp_path / "mask.png"
    text.write_text("this is not a PNG\n")
    with pytest.raises(VosError, match="not a readable image"):
        read_mask(text)
    with pytest.raises(VosError, match="does not exist"):
        read_mask(tmp_path / "absent.png")


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_all_zero_mask_is_a_vos_error(tmp_path, mode):
    Image.new(mode, (64, 48)).save(tmp_path / "zero.png")
    with pytest.raises(VosError, match="no object pixels"):
        read_mask(tmp_path / "zero.png")


def test_write_palette_png_round_trips(tmp_path):
    ids = blob_ids()
    palette = davis_palette()
    write_palette_png(tmp_path / "out.png", ids, palette)
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image), ids)
        written = np.array(image.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(written[:4], palette[:4])
    back = read_mask(tmp_path / "out.png")
    assert np.array_equal(back.ids, ids) and back.object_ids == [1, 3]


@pytest.mark.parametrize("high", [255, 1])
def test_binary_rule_is_the_engines(high):
    from engine.objects import object_ids

    grey = (blob_ids() > 0).astype(np.uint8) * high
    assert np.array_equal(object_ids(grey), (grey > 0).astype(np.uint8))
    assert np.array_equal(object_ids(blob_ids()), blob_ids()), "other values are ids as they are"
