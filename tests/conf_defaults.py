"""Strategy and training settings for tests, from conf/'s defaults (the code has none of its own)."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

from server_app.config import load_config
from strategy.replies import Reliability
from genfl_torch.train import TrainSettings


@lru_cache(maxsize=1)
def _cfg():
    return load_config([])


def reliability(**overrides) -> Reliability:
    from server_app.build import reliability as from_conf

    return dataclasses.replace(from_conf(_cfg()), **overrides)


def train_settings(**overrides) -> TrainSettings:
    client = _cfg().client
    values = dict(epochs=client.local_epochs, batch_size=client.batch_size, lr=client.lr, momentum=client.momentum,
                  weight_decay=client.weight_decay, augment=False, proximal_mu=0.0, max_steps=None,
                  fast_cuda=client.fast_cuda)
    return TrainSettings(**{**values, **overrides})
