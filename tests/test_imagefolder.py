"""Node-local image folders: real PNG/JPEG files written here, read back as the ClientApp reads them."""

import numpy as np
import pytest
import torch
from PIL import Image

from genfl_torch.classes import class_names
from genfl_torch.data import Split
from genfl_torch.imagefolder import ImageFolderError, read_image_folder, write_image_folder
from genfl_torch.partition import label_histogram

DIGITS = class_names("digits")


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_export_then_read_gives_the_same_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 17, size=(30, 1, 8, 8)).astype(np.float32) / 16.0)  # digits-style floats
    labels = torch.from_numpy(rng.integers(0, 10, size=30))
    counts = write_image_folder(tmp_path / "node", Split(images, labels), DIGITS)
    back = read_image_folder(tmp_path / "node", DIGITS, channels=1, image_size=8)
    assert counts == label_histogram(labels.numpy(), 10) == label_histogram(back.labels.numpy(), 10)
    assert back.images.dtype == torch.uint8 and back.images.shape == (30, 1, 8, 8)
    # The reader's order is by class folder then file: compare as sorted (label, pixels) pairs.
    expected = sorted((int(y), tuple((x * 255).round().to(torch.uint8).flatten().tolist())) for x, y in zip(images, labels))
    got = sorted((int(y), tuple(x.flatten().tolist())) for x, y in zip(back.images, back.labels))
    assert got == expected


def test_folders_map_by_class_name_and_absent_classes_count_zero(tmp_path):
    _save(tmp_path / "seven" / "a.png", np.zeros((8, 8)))
    _save(tmp_path / "seven" / "nested" / "b.png", np.zeros((8, 8)))
    _save(tmp_path / "zero" / "c.png", np.zeros((8, 8)))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "seven" / ".DS_Store").write_bytes(b"junk")
    data = read_image_folder(tmp_path, DIGITS, channels=1, image_size=8)
    assert label_histogram(data.labels.numpy(), 10) == [1, 0, 0, 0, 0, 0, 0, 2, 0, 0]


def test_images_are_converted_to_the_data_sets_size_and_channels(tmp_path):
    _save(tmp_path / "cat" / "big.png", np.full((40, 50, 3), 200))  # RGB, not square
    Image.new("L", (32, 32), 90).save(tmp_path / "cat" / "gray.jpg")
    to_rgb = read_image_folder(tmp_path, class_names("cifar10"), channels=3, image_size=32)
    assert to_rgb.images.shape == (2, 3, 32, 32) and to_rgb.labels.tolist() == [3, 3]
    to_gray = read_image_folder(tmp_path, class_names("cifar10"), channels=1, image_size=8)
    assert to_gray.images.shape == (2, 1, 8, 8)
    assert int(to_gray.images[0].float().mean().round()) == 200


@pytest.mark.parametrize("case, names_in_message", [
    ("missing", ["no such folder", "absent"]),
    ("relative", ["must be an absolute path"]),
    ("unknown_class", ["giraffe", "has no class"]),
    ("unreadable", ["notes.png", "not a readable image"]),
    ("empty_file", ["blank.png", "empty file"]),
    ("no_images", ["no images"]),
    ("loose_file", ["stray.png", "outside the class folders"]),
])
def test_bad_folders_raise_errors_that_name_the_file_or_folder(tmp_path, case, names_in_message):
    root = tmp_path / "node"
    root.mkdir()
    if case == "missing":
        root = tmp_path / "absent"
    elif case == "relative":
        root = "relative/images"
    elif case == "unknown_class":
        _save(root / "giraffe" / "a.png", np.zeros((8, 8)))
    elif case == "unreadable":
        (root / "one").mkdir()
        (root / "one" / "notes.png").write_text("not an image")
    elif case == "empty_file":
        (root / "one").mkdir()
        (root / "one" / "blank.png").write_bytes(b"")
    elif case == "no_images":
        (root / "one").mkdir()
    elif case == "loose_file":
        _save(root / "stray.png", np.zeros((8, 8)))
    with pytest.raises(ImageFolderError) as error:
        read_image_folder(root, DIGITS, channels=1, image_size=8)
    message = str(error.value)
    assert all(part in message for part in names_in_message), message
    assert "\n" not in message


def test_truncated_image_is_reported_by_name(tmp_path):
    path = tmp_path / "two" / "cut.png"
    _save(path, np.random.default_rng(0).integers(0, 255, (64, 64)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImageFolderError, match="cut.png: not a readable image"):
        read_image_folder(tmp_path, DIGITS, channels=1, image_size=8)


def test_export_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    data = Split(torch.zeros((1, 1, 8, 8)), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ImageFolderError, match="not empty"):
        write_image_folder(tmp_path, data, DIGITS)
