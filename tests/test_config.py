"""Configuration: conf/ is the one source of defaults; bad values fail early, naming the key."""

import pytest

from server_app.config import ConfigError, load_config, overrides_from_run_config


def test_embedded_default_is_genfl_on_digits_with_20_clients(make_config):
    cfg = make_config()
    assert cfg.dataset.name == "digits"
    assert cfg.strategy.name == "genfl" and cfg.generator.backend == "class_conditional"
    assert cfg.federation.num_clients == 20
    assert cfg.partition.alpha == 0.3


@pytest.mark.parametrize(
    "override, key",
    [
        ("partition.alpha=-1", "partition.alpha"),
        ("partition.alpha=0", "partition.alpha"),
        ("client.lr=abc", "client.lr"),
        ("client.local_epochs=0", "client.local_epochs"),
        ("federation.fraction_train=1.5", "federation.fraction_train"),
        ("num_rounds=0", "num_rounds"),
        ("dataset=mnist", "dataset/mnist"),
        ("client.lrr=0.1", "client.lrr"),
    ],
)
def test_bad_value_is_a_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_run_config_short_keys_and_overrides_map_to_hydra():
    run_config = {"num-server-rounds": 7, "alpha": 0.1, "dataset": "", "overrides": "client.lr=0.02 seed=3"}
    overrides = overrides_from_run_config(run_config)
    assert overrides == ["num_rounds=7", "partition.alpha=0.1", "client.lr=0.02", "seed=3"]
    cfg = load_config(overrides)
    assert (cfg.num_rounds, cfg.partition.alpha, cfg.client.lr, cfg.seed) == (7, 0.1, 0.02, 3)


def test_run_config_overrides_accept_a_json_list():
    assert overrides_from_run_config({"overrides": '["seed=1", "output.root=/tmp/a b"]'}) == ["seed=1", "output.root=/tmp/a b"]


def test_pyproject_run_config_keys_are_all_known():
    import tomllib
    from pathlib import Path

    from server_app.config import RUN_CONFIG_KEYS

    keys = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(keys) == set(RUN_CONFIG_KEYS) | {"overrides"}
    assert all(value == "" for value in keys.values()), "defaults belong in conf/, not pyproject.toml"


# Spellings of earlier versions (conf/ named one concept per key in issue 27): each fails with one line
# naming what replaced it, whether it comes from genfl-run's command line, a sweep or `flwr run`'s run config.
OLD_SPELLINGS = [
    (["strategy=fedavg"], "strategy=fedavg is now strategy=base_only"),
    (["strategy=fedavg,genfl"], "strategy=fedavg is now strategy=base_only"),
    (["+kappa=aug_0.3"], "+kappa=aug_0.3: the kappa/ presets are gone: use strategy.kappa_aug=0.3"),
    (["kappa=aug_0.1,aug_0.5"], "use strategy.kappa_aug=0.1,0.5"),
    (["strategy.kappa_schedule=linear"], "strategy.kappa_schedule is gone: use mix.kappa_policy"),
    (["strategy.kappa_aug_final=0.1"], "strategy.kappa_aug_final is gone: use mix.kappa_aug_final"),
    (["strategy.kappa_fl=0.5"], "strategy.kappa_fl is gone: use strategy.kappa_aug"),
]


@pytest.mark.parametrize("overrides, says", OLD_SPELLINGS)
def test_an_earlier_spelling_is_one_line_naming_the_new_key(overrides, says, capsys):
    from genfl_cli.run import run

    with pytest.raises(ConfigError) as info:
        load_config(overrides)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert run(overrides) == 2  # genfl-run, before anything starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("genfl-run: config error: ") and says in err


def test_flwr_runs_run_config_with_the_old_strategy_name_is_refused():
    with pytest.raises(ConfigError, match="strategy=fedavg is now strategy=base_only"):
        load_config(overrides_from_run_config({"strategy": "fedavg"}))


def test_genfl_run_exits_2_on_the_old_strategy_name(capsys):
    from genfl_cli.run import main

    with pytest.raises(SystemExit) as stop:
        main(["strategy=fedavg"])  # genfl-run's entry point
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["genfl-run: config error: strategy=fedavg is now strategy=base_only "
                                              "(kappa_aug 0: the base strategy alone; FedAvg is aggregation=fedavg, "
                                              "the default)"]


@pytest.mark.parametrize("preset", ["paper_cifar10", "paper_cifar100", "paper_cifar10_tuned", "paper_cifar100_tuned"])
def test_the_paper_presets_train_the_augmented_model_like_a_client_stated_once(preset):
    pairs = {"epochs": "local_epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
             "weight_decay": "weight_decay"}
    cfg = load_config([f"+experiment={preset}"])
    assert {a: cfg.augmented[a] for a in pairs} == {a: cfg.client[c] for a, c in pairs.items()}
    moved = load_config([f"+experiment={preset}", "client.lr=0.01", "client.batch_size=32"])
    assert (moved.augmented.lr, moved.augmented.batch_size) == (0.01, 32)  # one value, both trainers
