"""Specification of zsadlab.data.images: every image format becomes uint8 RGB, masks become {0, 1}."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zsadlab.data import DatasetError, load_mask, load_rgb
from zsadlab.data.images import image_size, load_mask_values


def test_grayscale_image_is_loaded_as_three_identical_channels(write_image, tmp_path):
    path = write_image(tmp_path / "g.png", mode="L")
    rgb = load_rgb(path)
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_16_bit_image_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(path)
    assert load_rgb(path).shape == (4, 5, 3)
    assert load_rgb(path).max() == 255


def test_palette_image_is_expanded_to_its_colours(tmp_path):
    path = tmp_path / "pal.png"
    img = Image.new("P", (5, 4))
    img.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.save(path)
    assert tuple(load_rgb(path)[1, 1]) == (200, 10, 20)


def test_rgba_image_drops_alpha(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 128)).save(path)
    assert tuple(load_rgb(path)[0, 0]) == (10, 20, 30)


def test_truncated_image_raises_dataset_error_naming_the_file(write_image, tmp_path):
    path = write_image(tmp_path / "cut.png", size=(64, 64))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cut.png"):
        load_rgb(path)


def test_non_image_file_raises_dataset_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(DatasetError, match="notes.png"):
        load_rgb(path)


def test_every_non_zero_mask_value_is_anomalous_like_the_official_reader(tmp_path):
    path = tmp_path / "labels.png"
    Image.fromarray(np.array([[0, 1, 2, 127, 128, 255]], np.uint8)).save(path)
    assert load_mask(path).tolist() == [[0, 1, 1, 1, 1, 1]]


def test_label_1_in_a_16_bit_mask_is_kept(tmp_path):
    path = tmp_path / "deep_mask.png"
    Image.fromarray(np.array([[0, 1, 60000]], np.uint16)).save(path)
    assert load_mask(path).tolist() == [[0, 1, 1]]


def test_12_bit_image_in_a_16_bit_png_is_scaled_by_its_own_bit_depth_not_to_near_black(tmp_path):
    path = tmp_path / "scan12.png"
    Image.fromarray(np.array([[0, 2048, 4095]], np.uint16)).save(path)
    assert load_rgb(path)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotation_is_applied_to_images_and_sizes(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 20), (200, 0, 0)).save(path, exif=exif)
    assert load_rgb(path).shape == (40, 20, 3)
    assert image_size(path) == (20, 40)


def test_decompression_bomb_is_one_clear_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 // 4)  # 300x300 is now over twice the limit
    with pytest.raises(DatasetError, match="huge.png is too large to read safely"):
        load_rgb(path)
    with pytest.raises(DatasetError, match="huge.png is too large"):
        image_size(path)


def test_palette_mask_is_read_by_index_not_by_colour(tmp_path):
    path = tmp_path / "pal_mask.png"
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # index 1 is dark red: luminance 38
    img.putpixel((2, 0), 1)
    img.save(path)
    assert load_mask(path).tolist() == [[0, 0, 1]]


def test_rgb_mask_file_is_read_as_a_binary_mask(tmp_path):
    path = tmp_path / "m.png"
    Image.new("RGB", (3, 2), (255, 255, 255)).save(path)
    assert load_mask(path).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert load_mask_values(path).shape == (2, 3)
