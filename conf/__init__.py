"""The single source of every default (Hydra YAML). A package so that a built wheel carries it:
everything finds the folder through `CONF_DIR`, never through a path relative to the source tree."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
