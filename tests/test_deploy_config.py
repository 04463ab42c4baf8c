"""Deployment settings: the federation's nodes (conf `nodes`), the `expected-nodes` run-config key,
and the deploy runner's connection checks, all failing early with one line that names what to fix."""

import pytest

from server_app.config import ConfigError, load_config, overrides_from_run_config
from genfl_cli.deploy_run import check_transport, connection_settings, run as deploy_run
from genfl_cli.flwr_runs import RunError


def test_default_federation_is_the_nodes_that_are_there(make_config):
    assert make_config().federation.expected_nodes is None


@pytest.mark.parametrize("override, key", [
    ("federation.expected_nodes=0", "federation.expected_nodes"),
    ("federation.expected_nodes=two", "federation.expected_nodes"),
    ("federation.node_wait_timeout=0", "federation.node_wait_timeout"),
])
def test_bad_node_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config([override])


def test_min_train_nodes_cannot_exceed_the_pinned_count():
    with pytest.raises(ConfigError, match=r"federation.min_train_nodes: must be <= federation.expected_nodes \(3\)"):
        load_config(["federation.expected_nodes=3", "federation.min_train_nodes=4"])


def test_expected_nodes_run_config_key_pins_the_federation():
    assert load_config(overrides_from_run_config({"expected-nodes": 3})).federation.expected_nodes == 3


def test_missing_connection_is_named_with_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "a"\n\n[superlink.a]\naddress = "h:1"\n')
    with pytest.raises(RunError, match=r"no connection \[superlink.edge\] .* \(known: a\)"):
        connection_settings("edge")


@pytest.mark.parametrize("address, insecure, allowed, refused", [
    ("10.0.0.5:9093", True, False, True),
    ("gpu.lan:9093", True, False, True),
    ("10.0.0.5:9093", True, True, False),     # --insecure: the user asked for it
    ("127.0.0.1:9093", True, False, False),   # loopback never leaves the machine
    ("localhost:9093", True, False, False),
    (":local:", None, False, False),           # Flower's managed local simulation
    ("10.0.0.5:9093", None, False, False),     # TLS (root-certificates)
])
def test_insecure_connections_to_other_machines_need_an_explicit_flag(address, insecure, allowed, refused):
    settings = {"address": address} | ({"insecure": insecure} if insecure is not None else {})
    if refused:
        with pytest.raises(RunError, match="is insecure.*pass --insecure"):
            check_transport("edge", settings, allowed)
    else:
        check_transport("edge", settings, allowed)


def test_deploy_run_rejects_a_bad_config_before_contacting_anything(capsys):
    assert deploy_run("nowhere", ["partition.alpha=-1"]) == 2
    assert capsys.readouterr().err.strip() == "genfl-deploy-run: config error: partition.alpha: must be > 0 (got -1)"


def test_deploy_run_with_an_unknown_connection_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    assert deploy_run("nowhere", [f"output.dir={tmp_path / 'run'}"]) == 2
    assert "no flwr config at" in capsys.readouterr().err


def test_deploy_run_hands_the_serverapp_a_results_folder_with_equals_and_commas(tmp_path, monkeypatch):
    # A sweep job's folder name: unquoted, Hydra would read ',' as a sweep and '=' as a new key.
    from flwr.common.config import parse_config_args

    from genfl_cli import deploy_run as deploy
    from server_app.config import run_directory
    from genfl_cli.flwr_runs import quoted

    folder = tmp_path / "x" / "partition.alpha=0.1,seed=0"
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink.local]\naddress = "127.0.0.1:9093"\ninsecure = true\n')
    monkeypatch.setattr(deploy.signal, "signal", lambda *args: None)  # keep pytest's own SIGTERM handling
    sent = {}

    def start_run(app_dir, connection, run_config, env, federation_config=None):
        sent.update(parse_config_args([str(run_config)]))  # what `flwr run --run-config FILE` sends
        raise RunError("stopped before contacting the SuperLink")

    monkeypatch.setattr(deploy, "start_run", start_run)
    assert deploy_run("local", [f"output.dir={quoted(folder)}"]) == 1

    def served_folder():  # as the ServerApp composes it (server_app/app.py)
        try:
            return run_directory(load_config(overrides_from_run_config(sent)))
        except ConfigError as err:
            return f"ConfigError: {err}"

    assert served_folder() == folder


def test_without_app_the_command_line_leaves_the_app_folder_to_the_run(monkeypatch):
    import sys

    from genfl_cli import deploy_run

    seen = {}
    monkeypatch.setattr(deploy_run, "run", lambda connection, overrides, app, *rest: seen.update(app=app) or 0)
    monkeypatch.setattr(sys, "argv", ["genfl-deploy-run", "edge", "seed=1"])
    with pytest.raises(SystemExit) as stop:
        deploy_run.main()
    assert stop.value.code == 0 and seen["app"] is None  # run() then uses this checkout or installation
