"""Tests for debugatlas.data: unreadable image files named (lazily and up front), class-name checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from debugatlas.core.errors import DebugAtlasError
from debugatlas.data import TensorImageDataset, class_names, folder_split, image_folder, verify_image_files


def _png(path, value: int, side: int = 8) -> None:
    from PIL import Image

    Image.fromarray(np.full((side, side, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture()
def folder(tmp_path):
    """root/<cat|dog>/*.png: three good images per class, one random-bytes file, one truncated PNG."""
    root = tmp_path / "data"
    for k, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            _png(root / name / f"{i}.png", 40 * k + 10 * i)
    (root / "cat" / "9_noise.png").write_bytes(np.random.default_rng(0).bytes(200))
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "9_cut.png").write_bytes(good[: len(good) // 2])
    return root


def test_good_items_load_and_bad_files_are_named_when_loaded(folder):
    data = image_folder(folder)
    files = [p for p, _ in data.samples]
    assert data.classes == ["cat", "dog"] and len(files) == 8
    image, label = data[files.index(str(folder / "dog" / "1.png"))]
    assert label == 1 and image.shape == (3, 8, 8) and torch.allclose(image, torch.full_like(image, 50 / 255))
    for name in ("cat/9_noise.png", "dog/9_cut.png"):
        with pytest.raises(DebugAtlasError) as info:
            data[files.index(str(folder / name))]
        assert str(folder / name) in str(info.value) and "HINT: remove or replace" in str(info.value)


def test_verify_image_files_lists_every_bad_file(folder):
    with pytest.raises(DebugAtlasError) as info:
        verify_image_files(folder)
    message = str(info.value)
    assert message.startswith("2 of 8 image files could not be read")
    assert "9_noise.png" in message and "9_cut.png" in message and "1.png" not in message
    with pytest.raises(DebugAtlasError, match="2 of 8"):
        image_folder(folder, verify=True)
    (folder / "cat" / "9_noise.png").unlink()
    (folder / "dog" / "9_cut.png").unlink()
    assert verify_image_files(image_folder(folder)) == 6
    assert len(image_folder(folder, verify=True, grayscale=True, size=4)[0][0]) == 1


def test_folder_split_names_a_bad_file(folder):
    with pytest.raises(DebugAtlasError, match="9_(noise|cut).png"):
        folder_split(folder, n_val=3)
    with pytest.raises(DebugAtlasError, match="leaves no images for training"):
        folder_split(folder, n_val=8)
    with pytest.raises(DebugAtlasError, match="not a directory"):
        folder_split(folder / "missing")


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(DebugAtlasError, match="not a directory"):
        image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DebugAtlasError, match="Could not read images"):
        image_folder(tmp_path / "empty")


def test_class_names_are_checked():
    data = TensorImageDataset(torch.zeros(2, 1, 4, 4), [0, 1], ["<i>a</i>", "b"])
    assert class_names(data) == ["<i>a</i>", "b"]
    assert class_names(data, ["x", "y"]) == ["x", "y"]
    assert class_names(object(), None, 3) == ["0", "1", "2"]
    with pytest.raises(DebugAtlasError, match="used twice"):
        class_names(TensorImageDataset(torch.zeros(2, 1, 4, 4), [0, 1], ["a", "a"]))
    with pytest.raises(DebugAtlasError, match="No class names"):
        class_names(object())
