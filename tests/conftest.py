"""Shared fixtures: configs composed from the real conf/ so tests exercise the shipped defaults."""

from __future__ import annotations

import pytest

from server_app.config import load_config


@pytest.fixture
def make_config():
    """Compose conf/ with Hydra overrides, exactly as the launcher and the ServerApp do."""
    return lambda *overrides: load_config(list(overrides))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second intra-op thread; on a busy 2-core machine it only waits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
