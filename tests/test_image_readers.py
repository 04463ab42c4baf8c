"""One image-folder reader: a node's ``data-path`` and the server's ``generator=corpus`` folder decode
the same files to the same pixels (same suffix filter, same resize filter, same order)."""

import logging

import numpy as np
import torch
from PIL import Image

from generation.corpus import image_folder
from genfl_torch.imagefolder import read_image_folder

NAMES = ("airplane", "cat", "dog")


def _write(path, array, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **save)


def _noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape)


def test_the_corpus_and_a_client_decode_the_same_folder_to_identical_tensors(tmp_path):
    _write(tmp_path / "cat" / "noise.png", _noise((23, 29, 3), 0))  # resized: bilinear vs bicubic differed here
    _write(tmp_path / "cat" / "photo.jpg", _noise((40, 40, 3), 1), format="JPEG")
    _write(tmp_path / "dog" / "gray.bmp", _noise((8, 8), 2))  # grayscale, already the target size
    for channels in (3, 1):
        client = read_image_folder(tmp_path, NAMES, channels=channels, image_size=8)
        corpus = image_folder(tmp_path, NAMES, image_size=8, channels=channels)
        assert corpus.labels.tolist() == client.labels.tolist() == [1, 1, 2]
        assert torch.equal(corpus.images, client.images.float() / 255), f"{channels} channels"


def test_both_paths_read_and_skip_the_same_files(tmp_path, caplog):
    _write(tmp_path / "cat" / "a.png", _noise((8, 8, 3), 0))
    _write(tmp_path / "cat" / "nested" / "b.PNG", _noise((8, 8, 3), 1))  # nested, upper-case suffix: read
    (tmp_path / "cat" / "labels.csv").write_text("a.png,cat\n")  # not an image: skipped with a warning
    (tmp_path / "cat" / "._a.png").write_bytes(b"macOS resource fork")  # hidden: skipped
    caplog.set_level(logging.WARNING, logger="genfl_torch.imagefolder")
    client = read_image_folder(tmp_path, NAMES, channels=3, image_size=8)
    corpus = image_folder(tmp_path, NAMES, image_size=8, channels=3)
    assert len(client) == len(corpus.labels) == 2
    assert torch.equal(corpus.images, client.images.float() / 255)
    assert "labels.csv" in caplog.text and "._a.png" not in caplog.text
