"""The registry of image generators: every backend, the data sets it can serve, and how it is built.

Importing this module is cheap (no torch, no diffusers): configuration checks ask `fit_problem`
before anything loads, and a backend's module is imported only when that backend is built (or
when `GENERATORS` is read). Every backend class has ``from_config(generator_cfg, dataset_cfg)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from genfl_torch.classes import BUILTIN_CLASS_NAMES

# generation.corpora.CORPORA, spelled out so that a fit check never imports torch (tests keep them equal)
DIGIT_CORPORA = ("digits-public", "fonts")


def _digits_problem(subject: str, dataset_cfg: Mapping, instead: str) -> str | None:
    """None if the data set is 8x8 grayscale digits (all the offline model and its corpora have)."""
    if (dataset_cfg["name"], dataset_cfg["channels"], dataset_cfg["image_size"]) == ("digits", 1, 8):
        return None
    return f"{subject} 8x8 digits only and cannot serve dataset={dataset_cfg['name']}; {instead}"


def _class_names_problem(generator_cfg: Mapping, dataset_cfg: Mapping) -> str | None:
    """None if every class has a name: the data set's built-in ones, or ``generator.class_names``."""
    names = generator_cfg.get("class_names")
    if names is None:
        if dataset_cfg["name"] in BUILTIN_CLASS_NAMES:
            return None
        return f"generator.class_names: dataset={dataset_cfg['name']} has no built-in class names; give one per class"
    if isinstance(names, str) or len(names) != dataset_cfg["num_classes"]:
        return (f"generator.class_names: needs one name per class of {dataset_cfg['name']} "
                f"({dataset_cfg['num_classes']}), got {names!r}")
    return None


def _text_to_image_fit(generator_cfg: Mapping, dataset_cfg: Mapping) -> str | None:
    """Class names for every class, and prompt settings that work (checked without torch or a model)."""
    from generation.prompts import prompt_problem, resolve_class_names

    problem = _class_names_problem(generator_cfg, dataset_cfg)
    if problem:
        return problem
    names = resolve_class_names(generator_cfg.get("class_names"), BUILTIN_CLASS_NAMES.get(dataset_cfg["name"], ()))
    return prompt_problem(generator_cfg, names)


def _class_conditional_fit(generator_cfg: Mapping, dataset_cfg: Mapping) -> str | None:
    return _digits_problem("generator=class_conditional makes", dataset_cfg, "use generator=stable_diffusion")


def _corpus_fit(generator_cfg: Mapping, dataset_cfg: Mapping) -> str | None:
    if generator_cfg["corpus"] in DIGIT_CORPORA:
        return _digits_problem(f"generator.corpus={generator_cfg['corpus']} holds", dataset_cfg,
                               "give an absolute image folder instead")
    return _class_names_problem(generator_cfg, dataset_cfg)


@dataclass(frozen=True)
class Backend:
    """A backend: where its class lives (imported only to build one) and which data sets it serves."""

    class_path: str  # "module:Class"
    fit_problem: Callable[[Mapping, Mapping], str | None]  # why it cannot serve a data set, None if it can

    def load_class(self) -> type:
        module, _, name = self.class_path.partition(":")
        return getattr(importlib.import_module(module), name)


BACKENDS = {
    "class_conditional": Backend("generation.class_conditional:ClassConditionalGenerator", _class_conditional_fit),
    "stable_diffusion": Backend("generation.text_to_image:TextToImageGenerator", _text_to_image_fit),
    "corpus": Backend("generation.corpus:CorpusGenerator", _corpus_fit),
}


def __getattr__(name: str):
    """``GENERATORS``: ``{backend name: class}``; reading it imports every backend (torch, diffusers)."""
    if name == "GENERATORS":
        return {backend: entry.load_class() for backend, entry in BACKENDS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit_problem(generator_cfg: Mapping, dataset_cfg: Mapping) -> str | None:
    """Why the ``generator`` config cannot serve the ``dataset`` config (one line naming the key), or None.

    Needs neither torch nor a model: config validation and `build_generator` ask the same question.
    """
    backend = generator_cfg["backend"]
    if backend not in BACKENDS:
        return f"generator.backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    return BACKENDS[backend].fit_problem(generator_cfg, dataset_cfg)


def build_generator(generator_cfg: Mapping, dataset_cfg: Mapping):
    """The generator of conf/generator/<backend>.yaml, making images at the data set's size and channels.

    Returns an `generation.base.ImageGenerator`; a generator that cannot serve the data set is a ValueError.
    """
    generator_cfg, dataset_cfg = _plain(generator_cfg), _plain(dataset_cfg)
    problem = fit_problem(generator_cfg, dataset_cfg)
    if problem:
        raise ValueError(problem)
    return BACKENDS[generator_cfg["backend"]].load_class().from_config(generator_cfg, dataset_cfg)


def _plain(cfg: Mapping) -> dict:
    """A config node as plain, resolved Python containers (DictConfig or dict in)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
