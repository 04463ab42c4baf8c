"""The single source of every default (Hydra YAML). A package so that a built wheel carries it:
everything finds the folder through `CONF_DIR`, never through a path relative to the source tree."""

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent
# kappa_fl is derived, never configured: conf/strategy/*.yaml set it to ${one_minus:${.kappa_aug}}.
OmegaConf.register_new_resolver("one_minus", lambda x: round(1.0 - float(x), 12), replace=True)
