"""Every base strategy the code knows has a config in conf/aggregation/, composes, and aggregates the
ClientApp's replies; every `aggregation` example in the README and docs/configuration.md composes."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord
from omegaconf import OmegaConf

from local_grid import LocalGrid
from server_app.build import base_strategy
from server_app.config import load_config
from strategy.bases import BASES
from conf_defaults import reliability
from strategy.genfl import GenFL
from strategy.kappa import KappaSchedule
from test_genfl_strategy import _numpy, _record, _state, node

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf" / "aggregation"


def test_the_registry_and_conf_aggregation_name_the_same_strategies():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(BASES)


@pytest.mark.parametrize("name", sorted(BASES))
def test_each_base_composes_and_aggregates_the_client_apps_replies(name):
    norm = ["model.norm=group"] if name == "qfedavg" else []
    cfg = load_config([f"aggregation={name}", "federation.num_clients=7", *norm])
    assert cfg.aggregation.name == name
    base = base_strategy(cfg, num_nodes=7)
    # Seven honest nodes (Bulyan needs 4f + 3) replying as the ClientApp does: num-examples and train-loss.
    model = (lambda w: {"w": np.asarray(w, np.float32)}) if norm else _state  # GroupNorm: no integer buffers
    grid = LocalGrid({i: node([3, 3, 3], i, lambda g: model(g["w"] + 0.1)) for i in range(7)})
    strategy = GenFL(base, num_classes=3, kappa=KappaSchedule(0.0, "constant", 0.0, 1), augmenter=None,
                     histogram_timeout=1, seed=0, reliability=reliability(max_relative_update=1e9))
    result = strategy.start(grid, _record(model([1.0, 1.0])), num_rounds=1, timeout=1, train_config=ConfigRecord())
    assert strategy.round_stats[1].round_accepted is True, strategy.round_stats[1]
    assert np.isfinite(_numpy(result.arrays)["w"]).all()


def test_qfedavg_with_batchnorm_is_a_config_error_naming_the_fix():
    from server_app.config import ConfigError

    with pytest.raises(ConfigError, match="model.norm=group"):
        load_config(["aggregation=qfedavg"])


def _readme_aggregation_overrides() -> list[list[str]]:
    text = (REPO / "README.md").read_text() + (REPO / "docs" / "configuration.md").read_text()
    commands = [shlex.split(line.split("#")[0])[1:] for line in text.splitlines()
                if line.startswith("genfl-run ") and "aggregation" in line]
    section = text.split("## Aggregation", 1)[1].split("\n## ", 1)[0]
    table_names = [name for row in section.splitlines() if row.startswith("| `")
                   for name in re.findall(r"`([a-z]+)`", row.split("|")[1])]
    extra = {"qfedavg": ["model.norm=group"]}
    return commands + [[f"aggregation={name}", *extra.get(name, [])] for name in table_names]


def test_every_aggregation_example_in_the_readme_composes():
    examples = _readme_aggregation_overrides()
    assert len(examples) >= len(BASES)  # the table names every base, and a few commands use them
    for overrides in examples:
        cfg = load_config(overrides)
        assert OmegaConf.select(cfg, "aggregation.name") in BASES, overrides
