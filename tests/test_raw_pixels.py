"""The raw-pixel baseline on decoded frames (``vpr_ros.evaluation.raw_pixels``) and on files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.evaluation import baselines
from vpr_ros.evaluation.raw_pixels import raw_pixel_descriptors, sad_search, thumbnail


def _textured_rgb(seed: int = 0, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Smooth colour waves plus a little noise: every 8x8 block of its thumbnail has contrast."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    waves = np.stack([127 + 120 * np.sin(x / (5 + 3 * c) + y / (7 + 2 * c) + c + seed) for c in range(3)], -1)
    noise = np.random.default_rng(seed).normal(0, 3, waves.shape)
    return np.clip(waves + noise, 0, 255).astype(np.uint8)


def test_thumbnail_of_an_rgb_frame_matches_the_file_descriptor_of_its_png(tmp_path: Path) -> None:
    rgb = _textured_rgb()
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    from_file = baselines.raw_pixel_descriptors([path])
    grey_file = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    # the file layer only reads: the same grey pixels give bit-identical descriptors
    np.testing.assert_array_equal(from_file[0], thumbnail(grey_file))
    # RGB2GRAY and IMREAD_GRAYSCALE use the same weights and differ only in rounding ...
    assert np.abs(grey_file.astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).max() <= 1
    # ... which a thumbnail averages and a block's contrast divides down to a few hundredths
    np.testing.assert_allclose(thumbnail(rgb), from_file[0], atol=0.05)
    frames = raw_pixel_descriptors([rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)])
    assert frames.shape == (2, 24 * 32) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(frames[0], thumbnail(rgb))
    assert raw_pixel_descriptors([], size=(6, 10)).shape == (0, 60)


@pytest.mark.parametrize(("size", "patch"), [((24, 32), 8), ((20, 30), 8)])
def test_patch_normalisation_gives_unit_blocks_and_zeros_for_flat_ones(
    size: tuple[int, int], patch: int
) -> None:
    height, width = size
    grey = np.full(size, 100, np.uint8)
    grey[:, 16:] = np.random.default_rng(1).integers(0, 256, (height, width - 16), dtype=np.uint8)
    thumb = thumbnail(grey, size=size, patch=patch).reshape(size)  # already at size: no resampling
    for y in range(0, height, patch):  # 20 x 30 leaves 4-row and 6-column blocks at the edges
        for x in range(0, width, patch):
            block = thumb[y : y + patch, x : x + patch]
            if x < 16:  # flat: zeros, not NaN
                np.testing.assert_array_equal(block, 0.0)
            else:
                assert block.mean() == pytest.approx(0.0, abs=1e-5)
                assert block.std() == pytest.approx(1.0, abs=1e-4)


def test_sad_search_ranks_the_identical_image_first_and_pads_with_minus_one() -> None:
    frames = [_textured_rgb(seed) for seed in range(3)]
    db = raw_pixel_descriptors(frames)
    distances, indices = sad_search(db, thumbnail(frames[1])[None], k=5)
    assert indices.dtype == np.int64 and indices.shape == distances.shape == (1, 5)
    assert indices[0, 0] == 1 and distances[0, 0] == 0.0
    assert sorted(indices[0, :3]) == [0, 1, 2] and distances[0, 1] <= distances[0, 2]
    np.testing.assert_array_equal(indices[0, 3:], -1)


def test_bad_shapes_and_settings_are_rejected() -> None:
    good = np.zeros((16, 16, 3), np.uint8)
    for image in (
        np.zeros((16, 16, 4), np.uint8),
        np.zeros((16, 16, 1), np.uint8),
        np.zeros((16,), np.uint8),
        np.zeros((0, 16, 3), np.uint8),
        np.zeros((16, 16, 3), np.float32),
        [[0, 1], [2, 3]],
    ):
        with pytest.raises(ValueError, match="image"):
            thumbnail(image)
    with pytest.raises(ValueError, match=r"image 1: expected an RGB uint8 \[H, W, 3\]"):
        raw_pixel_descriptors([good, np.zeros((16, 16, 2), np.uint8)])
    for size, patch in (((0, 32), 8), ((24, -1), 8), ((24, 32), 0)):
        with pytest.raises(ValueError, match="must be positive"):
            thumbnail(good, size=size, patch=patch)
        with pytest.raises(ValueError, match="must be positive"):
            raw_pixel_descriptors([], size=size, patch=patch)
    db = raw_pixel_descriptors([good])
    with pytest.raises(ValueError, match="expected"):
        sad_search(db, db[:, :10], 1)
    with pytest.raises(ValueError, match="k must be"):
        sad_search(db, db, 0)
