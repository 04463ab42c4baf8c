"""The corpus backend: real images through the generator interface, following the plan.

The contract every backend keeps (shapes, seeds, class independence, bad plans) is in test_generators.py.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from generation.cache import generate_cached
from generation.corpus import CorpusGenerator, image_folder
from generation.factory import build_generator
from generation.pretrain import pretraining_corpus, pretraining_settings


def _toy(per_class=(5, 3, 0)) -> CorpusGenerator:
    """Image i is filled with the value i/100, so each served image says which corpus image it is."""
    labels = torch.tensor([c for c, n in enumerate(per_class) for _ in range(n)])
    images = (torch.arange(len(labels), dtype=torch.float32) / 100).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return CorpusGenerator(images, labels, num_classes=len(per_class), description={"corpus": "toy"})


def _ids(images: torch.Tensor) -> list[int]:
    return [round(v * 100) for v in images[:, 0, 0, 0].tolist()]


def test_serves_plan_counts_in_class_order_without_repeats_when_the_class_has_enough():
    images, labels = _toy().generate({1: 2, 0: 4}, seed=0)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1]
    ids = _ids(images)
    assert set(ids[:4]) <= {0, 1, 2, 3, 4} and len(set(ids[:4])) == 4  # four distinct class-0 images
    assert set(ids[4:]) <= {5, 6, 7} and len(set(ids[4:])) == 2


def test_a_short_class_repeats_every_image_evenly_and_says_so():
    generator = _toy()
    images, labels = generator.generate({1: 8}, seed=0)
    counts = np.bincount(_ids(images), minlength=8)[5:8]
    assert sorted(counts.tolist()) == [2, 3, 3]  # 8 = 3 + 3 + 2: floor or ceil of 8/3 each
    assert generator.last_shortfall == {1: {"planned": 8, "available": 3}}
    generator.generate({1: 2}, seed=0)
    assert generator.last_shortfall == {}


def test_a_planned_class_the_corpus_lacks_is_an_error():
    with pytest.raises(ValueError, match="no images of class 2, but the plan asks for 1"):
        _toy().generate({0: 1, 2: 1}, seed=0)


def test_digits_public_corpus_is_exactly_the_generators_training_corpus(make_config):
    cfg = make_config("generator=corpus")
    generator = build_generator(cfg.generator, cfg.dataset)
    corpus_images, corpus_labels = pretraining_corpus("digits-public", pretraining_settings(cfg.dataset))
    assert generator.class_counts() == np.bincount(corpus_labels.numpy(), minlength=10).tolist()
    images, labels = generator.generate({c: 10 for c in range(10)}, seed=0)
    assert images.shape == (100, 1, 8, 8) and labels.bincount().tolist() == [10] * 10
    members = {tuple(x.flatten().tolist()) for x in corpus_images}
    assert all(tuple(x.flatten().tolist()) in members for x in images)
    assert generator.fingerprint()["corpus"] == "digits-public"


@pytest.fixture(scope="module")
def fonts():
    """The fonts corpus (5,000 rendered digits: seconds), built once for the tests that need it."""
    from server_app.config import load_config

    cfg = load_config(["generator=corpus", "generator.corpus=fonts"])
    return build_generator(cfg.generator, cfg.dataset)


def test_fonts_corpus_is_the_fonts_generators_training_corpus(fonts):
    generator = fonts
    assert generator.class_counts() == [500] * 10  # conf/pretrain.yaml: corpus_size 5000, classes balanced
    assert generator.fingerprint() == {"backend": "corpus", "corpus": "fonts", "seed": 0, "size": 5000}


def test_the_cache_keys_on_the_corpus(tmp_path, make_config, fonts):
    public = build_generator(make_config("generator=corpus").generator, make_config().dataset)
    a, _, hit_a = generate_cached(public, {0: 3}, 0, tmp_path)
    b, _, hit_b = generate_cached(fonts, {0: 3}, 0, tmp_path)
    again, _, hit_again = generate_cached(public, {0: 3}, 0, tmp_path)
    assert (hit_a, hit_b, hit_again) == (False, False, True)
    assert torch.equal(a, again) and not torch.equal(a, b)


def _write_folder(root, colours):
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 48), colour).save(root / name / f"{i}.png")


def test_image_folder_maps_sub_folders_to_class_names_and_resizes(tmp_path):
    _write_folder(tmp_path, {"cat": (255, 0, 0), "ship": (0, 0, 255)})
    names = ("airplane", "cat", "ship")
    generator = image_folder(tmp_path, names, image_size=32, channels=3)
    assert generator.class_counts() == [0, 2, 2]
    images, labels = generator.generate({1: 1, 2: 1}, seed=0)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 2]
    assert images[0, :, 5, 5].tolist() == [1.0, 0.0, 0.0] and images[1, :, 5, 5].tolist() == [0.0, 0.0, 1.0]
    grey = image_folder(tmp_path, names, image_size=8, channels=1).generate({1: 1}, seed=0)[0]
    assert grey.shape == (1, 1, 8, 8) and grey[0, 0, 0, 0].item() == pytest.approx(76 / 255)  # PIL's luma of red


def test_image_folder_fingerprint_follows_the_files(tmp_path):
    _write_folder(tmp_path, {"cat": (255, 0, 0)})
    before = image_folder(tmp_path, ("cat", "dog"), image_size=8, channels=3).fingerprint()
    Image.new("RGB", (40, 48), (0, 255, 0)).save(tmp_path / "cat" / "0.png")
    after = image_folder(tmp_path, ("cat", "dog"), image_size=8, channels=3).fingerprint()
    assert before["files_sha256"] != after["files_sha256"]


def test_image_folder_rejects_unknown_sub_folders_and_relative_paths(tmp_path):
    _write_folder(tmp_path, {"cat": (1, 2, 3), "kitten": (1, 2, 3)})
    with pytest.raises(ValueError, match="has no class 'kitten'"):  # the clients' reader's message
        image_folder(tmp_path, ("cat", "dog"), image_size=8, channels=3)
    with pytest.raises(ValueError, match="must be an absolute path"):
        image_folder("relative/folder", ("cat",), image_size=8, channels=3)
