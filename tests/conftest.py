"""Shared fixtures: configs composed from the real conf/ so tests exercise the shipped defaults."""

from __future__ import annotations

import pytest

from server_app.config import load_config


@pytest.fixture
def make_config():
    """Compose conf/ with Hydra overrides, exactly as the launcher and the ServerApp do."""
    return lambda *overrides: load_config(list(overrides))
