"""What genfl-run prints (issue 27 item 6): a line per phase and per round, not ~150 lines of YAML and
Flower's two 1,000-character ConfigRecord lines before round 1; the full config on request
(`--show-config`, always in metrics.json); `--help` says how to call it and exits 0."""

from __future__ import annotations

import io
import logging

import pytest
import yaml
from omegaconf import OmegaConf

from genfl_cli.run import main, quiet
from server_app.config import load_config

# The start of a real run's log stream as genfl-run received it (flwr 1.42, 2026-12-07), colours included.
STREAM = """\
Using SuperLink: genfl (127.0.0.1:46279)
\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `12736321687776046092`
\x1b[92mINFO \x1b[0m:      Starting Flower Simulation
\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.
\x1b[92mINFO \x1b[0m:      Federation `@none/default` (20 simulated SuperNodes)
\x1b[92mINFO \x1b[0m:      To change federation size, use the following command:
\x1b[92mINFO \x1b[0m:      \tflwr federation simulation-config @none/default <superlink> --num-supernodes <N>
Successfully installed genfl to /tmp/run/flwr-home/apps/genfl.genfl.0.1.0.a7dcf55b.
\x1b[92mINFO \x1b[0m:      federation: 20 SuperNode(s) connected
\x1b[92mINFO \x1b[0m:      histogram survey: asking the nodes for their label histograms (up to 600s)
/venv/lib/python3.11/site-packages/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, \
Ray will no longer override accelerator visible devices env var if num_gpus=0 or num_gpus=None (default).
  warnings.warn(
\x1b[92mINFO \x1b[0m:      histogram survey: done in 7.7s
\x1b[92mINFO \x1b[0m:      
\x1b[93mWARNING \x1b[0m:   node 7: no reply within 600s
\x1b[92mINFO \x1b[0m:      round 1/5: test accuracy 0.3444, test loss 1.9035, 20 clients trained, 51.4s, ETA 0:00:58
"""


def test_the_console_drops_the_runtimes_banner_and_keeps_every_line_of_the_run():
    shown = [line.rstrip("\n").split(":", 1)[-1].strip() for line in quiet(io.StringIO(STREAM))]
    assert shown == ["federation: 20 SuperNode(s) connected",
                     "histogram survey: asking the nodes for their label histograms (up to 600s)",
                     "histogram survey: done in 7.7s", "node 7: no reply within 600s",
                     "round 1/5: test accuracy 0.3444, test loss 1.9035, 20 clients trained, 51.4s, ETA 0:00:58"]


def test_flowers_own_strategy_log_is_left_out_and_its_warnings_kept():
    """The real Flower functions that printed the start-up block with both ConfigRecords in full."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.common.logger import log
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

    from server_app.app import quiet_flower_rounds

    logger, seen = logging.getLogger("flwr"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    saved = list(logger.filters)
    try:
        quiet_flower_rounds()
        quiet_flower_rounds()  # once is enough
        config = ConfigRecord({f"key-{i}": "x" * 40 for i in range(20)})
        log_strategy_start_info(5, ArrayRecord(), config, config)
        FedAvg(fraction_evaluate=0.0)  # Flower warns: federated evaluation skipped
        log(logging.INFO, "round 1/5: test accuracy 0.3444")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved
    assert seen == ["fraction_evaluate is set to 0.0. Federated evaluation will be skipped.",
                    "round 1/5: test accuracy 0.3444"]


def test_help_prints_both_forms_and_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])  # was: "config error: LexerNoViableAltException: --help", exit 2
    out, err = capsys.readouterr()
    assert stop.value.code == 0 and err == ""
    assert out.startswith("usage: genfl-run [KEY=VALUE ...]\n   or: genfl-run --resume DIR [KEY=VALUE ...]")
    assert "--show-config" in out


def test_an_unknown_option_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--verbose", "seed=1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "genfl-run: error: unrecognized arguments: --verbose"


def test_show_config_prints_the_composed_config_and_starts_nothing(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["--show-config", "strategy=base_only", f"output.dir={tmp_path / 'run'}"])
    assert stop.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(["strategy=base_only", f"output.dir={tmp_path / 'run'}"])
    assert shown == OmegaConf.to_container(expected, resolve=True)
    assert shown["strategy"] == {"name": "base_only", "kappa_aug": 0.0}
    assert not (tmp_path / "run").exists()  # nothing was started


def test_show_config_refuses_a_bad_value_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--show-config", "partition.alpha=-1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "genfl-run: config error: partition.alpha: must be > 0 (got -1)\n"
