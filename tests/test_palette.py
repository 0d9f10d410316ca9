"""The overlay drawn on the output video (vosctl.palette.draw_overlay)."""

import cv2
import numpy as np

from vosctl.palette import colourise, davis_palette, draw_overlay


def test_overlay_tints_objects_outlines_them_and_leaves_the_background():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    ids = np.zeros((60, 90), np.uint8)
    ids[10:30, 20:50] = 1
    ids[20:40, 45:70] = 2  # overlaps object 1: a border between two objects
    ids[50:, 80:] = 3  # touches the frame's corner
    palette = davis_palette()
    out = draw_overlay(frame, ids, palette)
    assert np.array_equal(out[ids == 0], frame[ids == 0])
    tint = cv2.addWeighted(frame, 0.5, palette[ids], 0.5, 0.0)
    kernel = np.ones((7, 7), np.uint8)
    for k in (1, 2, 3):
        region = (ids == k).astype(np.uint8)
        deep = cv2.erode(region, kernel, borderType=cv2.BORDER_REPLICATE) > 0  # more than 3 pixels from any edge
        assert np.array_equal(out[deep], tint[deep])
        # Pixels beside another id are outlined in the object's own colour.
        beside = (region > 0) & (cv2.dilate((ids != k).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        assert beside.any()
        assert (out[beside] == palette[k]).all()
    # The frame's own border is no edge: object 3's pixels along it are tinted, not outlined.
    assert np.array_equal(out[59, 89], tint[59, 89])


def test_overlay_of_an_empty_mask_is_the_frame():
    frame = np.full((8, 8, 3), 7, np.uint8)
    out = draw_overlay(frame, np.zeros((8, 8), np.uint8), davis_palette())
    assert np.array_equal(out, frame) and out is not frame


def test_colourise_gives_each_id_its_palette_colour():
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    palette = davis_palette()
    assert np.array_equal(colourise(ids, palette), palette[ids])
