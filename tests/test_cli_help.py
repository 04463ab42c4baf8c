"""Every example a genfl-* command's --help prints is valid (issue 26, item 11: `genfl-deploy-run --help`
showed `nodes.expected=3`, which the config refuses).

For each argparse command of pyproject's [project.scripts] (and its sub-commands) the help is captured
and its examples extracted: command lines (`genfl-...`, `python -m genfl_cli.x ...`, `python genfl_cli/x.py ...`,
on their own line or in backticks) and inline Hydra overrides (`key=value` in the help of a command
that takes overrides). Each command line must parse with that command's own parser and its overrides
must compose with `server_app.config.load_config`; nothing is run, except genfl-certs' examples,
which are run for real in a temporary folder (they take milliseconds and touch nothing else).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from server_app.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# Commands whose --help is not argparse's: genfl-sweep is a Hydra app.
NOT_ARGPARSE = {"genfl-sweep"}
ARGPARSE = sorted(set(SCRIPTS) - NOT_ARGPARSE)
# A command on a line of its own (an epilog's example) or in backticks (a description's).
_PREFIX = r"(?:genfl-[a-z-]+|python -m genfl_cli\.\w+|python genfl_cli/\w+\.py)"
_LINE = re.compile(rf"^\s*({_PREFIX}(?: [^\n]*)?)$", re.MULTILINE)
_BACKTICKED = re.compile(rf"`({_PREFIX}[^`]*)`")
_OVERRIDE = re.compile(r"(?<![\w.$/-])([a-z_]\w*(?:\.\w+)*=[^\s,()]+)")


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        self.namespace = namespace


def _main(module: str):
    return getattr(importlib.import_module(module), "main")


def _module_of(command: str) -> tuple[str, list[str]]:
    """``genfl-certs tls ...`` / ``python -m genfl_cli.certs ...`` / ``python genfl_cli/certs.py ...`` -> (module, argv)."""
    words = shlex.split(command, comments=True)
    if words[0] == "python" and words[1] == "-m":
        return words[2], words[3:]
    if words[0] == "python":
        return words[1].removesuffix(".py").replace("/", "."), words[2:]
    return SCRIPTS[words[0]].split(":")[0], words[1:]


def _help(module: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        _main(module)([*argv, "--help"])
    assert stop.value.code in (0, None), f"{module} {argv} --help exited {stop.value.code}"
    return capsys.readouterr().out


def help_texts(script: str, capsys) -> str:
    """The command's --help and each sub-command's, as printed (no line wrapping: COLUMNS is wide)."""
    module = SCRIPTS[script].split(":")[0]
    text = _help(module, [], capsys)
    usage = text.split("\n\n")[0]
    for choices in re.findall(r"(?<!\w )\{([\w,-]+)\}", usage):  # sub-commands, not an option's choices
        for sub in choices.split(","):
            text += "\n" + _help(module, [sub], capsys)
    return text


def examples(text: str) -> list[str]:
    return _LINE.findall(text) + _BACKTICKED.findall(text)


def parsed(command: str, monkeypatch) -> argparse.Namespace:
    """The namespace ``command``'s own parser makes of it; a parse error fails (argparse exits 2)."""
    module, argv = _module_of(command)
    argv = [os.path.expanduser(os.path.expandvars(word)) for word in argv]

    def capture(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    original = argparse.ArgumentParser.parse_args
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        try:
            _main(module)(argv)
        except _Parsed as done:
            return done.namespace
        except SystemExit as stop:
            pytest.fail(f"example `{command}` does not parse (exit {stop.code})")
    pytest.fail(f"example `{command}`: {module}.main did not parse its arguments")


def _composes(overrides: list[str], where: str) -> None:
    try:
        load_config(overrides)
    except ConfigError as err:
        pytest.fail(f"{where}: {' '.join(overrides)} is refused by the config: {err}")


@pytest.fixture
def wide(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at $COLUMNS; a wrapped example cannot be read back
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)


def test_every_script_is_either_checked_here_or_named_as_not_argparse():
    assert NOT_ARGPARSE <= set(SCRIPTS) and len(ARGPARSE) >= 7 and "genfl-run" in ARGPARSE


@pytest.mark.parametrize("script", ARGPARSE)
def test_every_example_in_help_parses_and_its_overrides_compose(script, capsys, monkeypatch, wide):
    text = help_texts(script, capsys)
    commands = examples(text)
    for command in commands:
        namespace = parsed(command, monkeypatch)
        if getattr(namespace, "overrides", None):
            _composes([os.path.expandvars(o) for o in namespace.overrides], f"{script} --help example `{command}`")
    if re.search(r"^usage: .*overrides", text, re.MULTILINE | re.DOTALL):
        inline = [token for token in _OVERRIDE.findall(text) if "..." not in token]
        for token in inline:
            _composes([os.path.expandvars(token)], f"{script} --help")
    print(f"{script}: {len(commands)} example command(s) checked")


def test_the_deploy_runner_shows_the_expected_nodes_key_the_config_has(capsys, wide):
    text = help_texts("genfl-deploy-run", capsys)
    assert "federation.expected_nodes=3" in _OVERRIDE.findall(text)
    assert "nodes.expected" not in text
    assert [c for c in examples(text) if c.startswith("genfl-deploy-run genfl-edge")]


def test_genfl_certs_examples_run_in_order(capsys, monkeypatch, wide, tmp_path):
    commands = _LINE.findall(help_texts("genfl-certs", capsys))  # the examples, not "the folder `genfl-certs tls` wrote"
    assert len(commands) >= 4, commands
    for command in commands:
        module, argv = _module_of(command)
        assert _main(module)([os.path.expanduser(os.path.expandvars(word)) for word in argv]) == 0, command
        capsys.readouterr()
    assert (tmp_path / "certificates" / "genfl-fleet.conf").is_file() and (tmp_path / "keys" / "edge-0.key").is_file()
