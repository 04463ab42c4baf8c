"""The generator contract (generation/base.py), checked alike for every backend in the registry.

Each backend is built by `build_generator` from the shipped conf/ with offline fixtures: the
committed class-conditional weights, a tiny Stable Diffusion folder loaded with `from_pretrained`,
and the digits-public corpus. Backend-specific behaviour is tested in the backend's own file.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from conf import CONF_DIR
from generation.factory import BACKENDS, DIGIT_CORPORA, build_generator, fit_problem
from tiny_sd import build_tiny_sd_folder  # tests/ is on sys.path: pytest puts it there (no __init__.py)

# Per backend: the overrides of a small, fast CPU generator, and one more that changes its images.
CASES = {
    "class_conditional": (["generator.device=cpu", "generator.sampling_steps=3", "generator.batch_size=4",
                           "generator.weights_dir=null", "generator.pretrain_if_missing=false"], "generator.sampling_steps=4"),
    "stable_diffusion": (["dataset=cifar10", "generator.device=cpu", "generator.local_files_only=true",
                          "generator.num_inference_steps=2", "generator.generation_resolution=16", "generator.batch_size=4"],
                         "generator.num_inference_steps=3"),
    "corpus": ([], "dataset.split_seed=1"),  # digits-public: the server's public share of the split
}


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def case(request, tiny_sd):
    """``(backend, its overrides, its config, its generator, one more override that changes its images)``."""
    backend = request.param
    overrides, change = CASES[backend]
    overrides = [f"generator={backend}", *overrides] + ([f"generator.model={tiny_sd}"] if backend == "stable_diffusion" else [])
    cfg = compose_config(*overrides)
    return backend, overrides, cfg, build_generator(cfg.generator, cfg.dataset), change


def test_the_registry_has_every_backend_of_conf_generator():
    shipped = {yaml.safe_load(path.read_text())["backend"] for path in (CONF_DIR / "generator").glob("*.yaml")}
    assert set(BACKENDS) == shipped == set(CASES)


def test_every_backend_class_has_the_interface(case):
    from generation.factory import GENERATORS  # {backend name: class}: imports every backend

    backend = case[0]
    cls = GENERATORS[backend]
    assert all(callable(getattr(cls, name, None)) for name in ("from_config", "generate", "fingerprint"))
    assert isinstance(case[3], cls)


def test_images_follow_the_plan_in_ascending_class_order(case):
    _, _, cfg, generator, _ = case
    images, labels = generator.generate({3: 2, 0: 1, 5: 0}, seed=0)
    assert images.shape == (3, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 3, 3]


def test_an_empty_plan_gives_empty_tensors_of_the_right_shape(case):
    _, _, cfg, generator, _ = case
    images, labels = generator.generate({2: 0}, seed=0)
    assert images.shape == (0, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert labels.shape == (0,) and labels.dtype == torch.int64


def test_same_seed_same_images_other_seed_other_images(case):
    generator = case[3]
    first, _ = generator.generate({0: 2, 3: 1}, seed=7)
    again, _ = generator.generate({0: 2, 3: 1}, seed=7)
    other, _ = generator.generate({0: 2, 3: 1}, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_class_does_not_depend_on_the_rest_of_the_plan(case):
    generator = case[3]
    alone, _ = generator.generate({3: 2}, seed=1)
    mixed, labels = generator.generate({0: 1, 3: 2, 9: 1}, seed=1)
    # Equal up to float rounding: CPU kernels may sum in another order for another batch shape.
    torch.testing.assert_close(mixed[labels == 3], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("plan, message", [({10: 1}, "plan names class 10.*classes 0..9"), ({0: -1}, "counts must be >= 0")])
def test_a_bad_plan_is_rejected(case, plan, message):
    with pytest.raises(ValueError, match=message):
        case[3].generate(plan, seed=0)


def test_the_fingerprint_is_stable_and_follows_what_changes_the_images(case):
    backend, overrides, cfg, generator, change = case
    fingerprint = generator.fingerprint()
    json.dumps(fingerprint)  # usable as a cache key
    assert fingerprint["backend"] == backend
    assert build_generator(cfg.generator, cfg.dataset).fingerprint() == fingerprint
    changed = compose_config(*overrides, change)
    assert build_generator(changed.generator, changed.dataset).fingerprint() != fingerprint


def test_the_fingerprint_loads_no_model_and_asks_no_network(case, monkeypatch):
    from diffusers import DiffusionPipeline, ModelMixin

    def refuse(*args, **kwargs):
        raise AssertionError("computing a fingerprint must not load a model or open a connection")

    for owner, name in [(ModelMixin, "from_pretrained"), (DiffusionPipeline, "from_pretrained"), (socket.socket, "connect")]:
        monkeypatch.setattr(owner, name, refuse)
    _, _, cfg, _, _ = case
    assert build_generator(cfg.generator, cfg.dataset).fingerprint()


def test_a_model_backend_keys_on_device_type_dtype_and_library_versions(case):
    """A CPU run must not load a GPU run's images (other kernels); no GPU is needed to compute the key."""
    from generation.cache import runtime_fingerprint

    backend, overrides, _, generator, _ = case
    if backend == "corpus":
        pytest.skip("real images: no model, nothing the machine changes")
    cpu = generator.fingerprint()
    assert runtime_fingerprint("cpu", torch.float32).items() <= cpu.items()
    gpu = compose_config(*overrides, "generator.device=cuda")
    assert build_generator(gpu.generator, gpu.dataset).fingerprint()["device_type"] == "cuda"


def test_an_unknown_setting_is_named(case):
    from omegaconf import OmegaConf

    _, _, cfg, _, _ = case
    with pytest.raises(ValueError, match="Unknown generator setting.*guidance_scal\\b"):
        build_generator({**OmegaConf.to_container(cfg.generator, resolve=True), "guidance_scal": 3.0}, cfg.dataset)


# --- which generator serves which data set ---------------------------------------------------------

@pytest.mark.parametrize("overrides, problem", [
    (["generator=class_conditional"], None),
    (["generator=class_conditional", "dataset=cifar10"], "generator=class_conditional makes 8x8 digits only and cannot serve dataset=cifar10"),
    (["generator=corpus"], None),
    (["generator=corpus", "dataset=cifar100"], "generator.corpus=digits-public holds 8x8 digits only and cannot serve dataset=cifar100"),
    (["generator=corpus", "dataset=cifar10", "generator.corpus=/data/public-images"], None),  # a folder serves any data set
    (["generator=corpus", "dataset=cifar10", "generator.corpus=/data/x", "generator.class_names=[a,b]"], "generator.class_names: needs one name per class of cifar10 \\(10\\)"),
    (["generator=stable_diffusion"], None),
    (["generator=stable_diffusion", "dataset=cifar100"], None),
    (["generator=stable_diffusion", "generator.class_names=[cat]"], "generator.class_names: needs one name per class of digits \\(10\\)"),
    (["generator.backend=gan"], "generator.backend: unknown backend 'gan'; choose one of class_conditional, stable_diffusion, corpus"),
])
def test_fit_problem_says_which_data_sets_a_generator_serves(overrides, problem):
    cfg = compose_config(*overrides)
    found = fit_problem(cfg.generator, cfg.dataset)
    assert found is None if problem is None else re.match(problem, found or ""), found


def test_build_and_config_validation_refuse_a_misfit_with_the_same_message():
    """One fit check: build_generator and config validation ask the same function (before any model loads)."""
    from server_app.config import ConfigError, load_config

    cfg = compose_config("generator=corpus", "dataset=cifar10")
    with pytest.raises(ValueError) as built:
        build_generator(cfg.generator, cfg.dataset)
    with pytest.raises(ConfigError) as validated:
        load_config(["generator=corpus", "dataset=cifar10"])
    assert str(built.value) == str(validated.value) == fit_problem(cfg.generator, cfg.dataset)
    load_config(["generator=corpus", "dataset=cifar10", "strategy=base_only"])  # the generator is not used: no check


def test_the_fit_check_names_the_offline_generators_corpora():
    from generation.corpora import CORPORA

    assert DIGIT_CORPORA == CORPORA
