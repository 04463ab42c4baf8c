"""Build the configured image generator for a data set: the one place that knows every backend."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from generation.base import ImageGenerator


def build_generator(generator_cfg: DictConfig, dataset_cfg: DictConfig) -> ImageGenerator:
    """``generator_cfg`` is conf/generator/<backend>.yaml; images come out at the data set's size."""
    backend = generator_cfg.backend
    if backend == "class_conditional":
        from generation.class_conditional import ClassConditionalGenerator, Pretraining

        if (dataset_cfg.name, dataset_cfg.channels, dataset_cfg.image_size) != ("digits", 1, 8):
            raise ValueError(
                f"generator=class_conditional makes 8x8 digits and cannot serve dataset={dataset_cfg.name}; "
                "use generator=stable_diffusion"
            )
        # Pretrain-on-first-use settings come from conf/pretrain.yaml, on this run's own data split.
        pretraining = Pretraining.from_conf_file(dataset_cfg)
        return ClassConditionalGenerator.from_config(OmegaConf.to_container(generator_cfg, resolve=True), pretraining)
    if backend == "stable_diffusion":
        from generation.prompts import builtin_class_names
        from generation.text_to_image import from_config

        return from_config(
            OmegaConf.to_container(generator_cfg, resolve=True),
            target_size=dataset_cfg.image_size,
            target_channels=dataset_cfg.channels,
            class_names_default=builtin_class_names(dataset_cfg.name),
        )
    if backend == "corpus":
        from generation.corpus import NAMED_CORPORA, image_folder, named_corpus
        from generation.prompts import builtin_class_names, resolve_class_names

        if generator_cfg.corpus in NAMED_CORPORA:
            return named_corpus(generator_cfg.corpus, dataset_cfg)
        names = generator_cfg.class_names
        class_names = resolve_class_names(None if names is None else list(names), builtin_class_names(dataset_cfg.name))
        return image_folder(generator_cfg.corpus, class_names, image_size=dataset_cfg.image_size, channels=dataset_cfg.channels)
    raise ValueError(f"generator.backend: unknown backend {backend!r}; choose class_conditional, stable_diffusion or corpus")
