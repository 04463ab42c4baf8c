"""The GPU check (bench/gpu_check, docs/gpu-check.md): what it carries and the run it makes.

Fast: the server's digits from an export file where scikit-learn is absent (the same pixels and split),
and the carried folder's guards (64 MiB, the Python version it was built for). Slow: the whole check
rehearsed on this CPU machine as on a GPU machine without internet: the wheelhouse built from the
registry for this Python, a fresh venv holding only torch/torchvision plus the GPU machines' own
packages (transformers, accelerate, huggingface_hub), everything else from the wheelhouse with
`pip install --no-index`, and the app run through the deployment runtime to its JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genfl_torch.data import load_splits
from genfl_torch.digits import EXPORT_ENV, export_digits

REPO = Path(__file__).resolve().parents[1]
# bench/gpu_check/run.py under its own name: its folder on sys.path would shadow modules named run/build
_spec = importlib.util.spec_from_file_location("gpu_check_run", REPO / "bench" / "gpu_check" / "run.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _block_sklearn(monkeypatch):
    """As on the GPU machines: `import sklearn...` raises ImportError."""
    monkeypatch.setitem(sys.modules, "sklearn", None)


# -- the server's digits without scikit-learn ----------------------------------------------------
def test_a_digits_export_gives_the_same_images_and_split_without_scikit_learn(tmp_path, monkeypatch, make_config):
    ds = make_config().dataset
    expected = load_splits(ds)  # scikit-learn's
    export = export_digits(tmp_path / "digits", ds.split_seed, ds.test_fraction, ds.public_fraction)
    assert export.stat().st_size < 100_000
    monkeypatch.setenv(EXPORT_ENV, str(export))
    _block_sklearn(monkeypatch)
    got = load_splits(ds)
    assert set(got) == {"federation", "public", "test"}
    for name, split in expected.items():
        assert torch.equal(got[name].images, split.images) and torch.equal(got[name].labels, split.labels), name
    assert [len(got[n]) for n in ("federation", "public", "test")] == [1077, 360, 360]


def test_an_export_of_another_split_is_refused_by_name(tmp_path, monkeypatch, make_config):
    ds = make_config().dataset
    export = export_digits(tmp_path / "digits.npz", ds.split_seed + 1, ds.test_fraction, ds.public_fraction)
    monkeypatch.setenv(EXPORT_ENV, str(export))
    with pytest.raises(ValueError, match=r"GENFL_DIGITS_EXPORT: the export holds the split .*\(1, 0\.2, 0\.2\), not \(0, 0\.2, 0\.2\)"):
        load_splits(ds)


def test_without_scikit_learn_or_an_export_the_error_says_what_to_do(monkeypatch, make_config):
    monkeypatch.delenv(EXPORT_ENV, raising=False)
    _block_sklearn(monkeypatch)
    with pytest.raises(ImportError, match=r"needs scikit-learn \(pip install scikit-learn\), or \$GENFL_DIGITS_EXPORT"):
        load_splits(make_config().dataset)


def test_an_unreadable_export_is_named(tmp_path, monkeypatch, make_config):
    monkeypatch.setenv(EXPORT_ENV, str(tmp_path / "nothing.npz"))
    with pytest.raises(FileNotFoundError, match=r"GENFL_DIGITS_EXPORT=.*nothing\.npz: not a digits export"):
        load_splits(make_config().dataset)


# -- the carried folder's guards -----------------------------------------------------------------
def _carry(tmp_path: Path, python_version: str, size: int) -> Path:
    carry = tmp_path / "carry"
    (carry / "wheelhouse").mkdir(parents=True)
    (carry / "manifest.json").write_text(json.dumps({"python_version": python_version}))
    with open(carry / "wheelhouse" / "big.whl", "wb") as fh:
        fh.truncate(size)  # sparse: its size counts, no disk is spent
    return carry


HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_carried_folder_over_64_mib_is_refused(tmp_path, capsys):
    carry = _carry(tmp_path, HERE, 64 * 2**20 + 1)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.check_carry(carry)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "is 64.0 MiB, over the 64 MiB that may be carried" in err


def test_the_carried_size_is_printed_and_what_run_py_adds_there_does_not_count(tmp_path, capsys):
    carry = _carry(tmp_path, HERE, 10 * 2**20)
    (carry / "site").mkdir()
    with open(carry / "site" / "installed.so", "wb") as fh:
        fh.truncate(100 * 2**20)
    manifest = gpu_check.check_carry(carry)
    assert 10 * 2**20 < manifest["carried_bytes"] < 10 * 2**20 + 1000
    assert "carried size 10.0 MiB" in capsys.readouterr().out


def test_wheels_for_another_python_are_refused_with_the_rebuild_command(tmp_path, capsys):
    carry = _carry(tmp_path, "3.99", 1000)
    with pytest.raises(SystemExit):
        gpu_check.check_carry(carry)
    err = capsys.readouterr().err
    assert f"the wheels are for CPython 3.99, this is {HERE}" in err
    assert f"rebuild with `python bench/gpu_check/build.py --python-version {HERE} --force`" in err


# -- the whole check, rehearsed on this CPU machine -----------------------------------------------
def _run(cmd: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd[:4]} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-4000:]}"
    return proc


@pytest.mark.slow
def test_the_gpu_check_runs_from_the_wheelhouse_alone_on_a_machine_like_the_gpu_machines(tmp_path):
    carry = tmp_path / "carry"
    built = _run([sys.executable, REPO / "bench" / "gpu_check" / "build.py", "--python-version", HERE, "--out", carry],
                 timeout=900, cwd=REPO)
    assert "carried size" in built.stdout and "of 64 MiB" in built.stdout, built.stdout
    manifest = json.loads((carry / "manifest.json").read_text())
    assert {"flwr", "diffusers", "hydra-core", "matplotlib"} <= set(manifest["carried"])
    assert not {"torch", "torchvision", "uv", "scikit-learn", "scipy", "ray"} & set(manifest["carried"])

    # A machine like the GPU machines: torch/torchvision (on this disk) and their packages, nothing else.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # nothing of the project's own environment on PATH: flwr's commands must come from the wheelhouse
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(sys.prefix))
    _run([python, "-m", "pip", "install", "--quiet", "torch==2.14.1", "torchvision==0.29.1", "transformers==5.17.0",
          "accelerate==1.15.0", "huggingface_hub==1.33.0"], timeout=1200, env=env)
    absent = subprocess.run([python, "-c", "import flwr"], capture_output=True, text=True, env=env)
    assert absent.returncode != 0 and "No module named 'flwr'" in absent.stderr
    absent = subprocess.run([python, "-c", "import sklearn"], capture_output=True, text=True, env=env)
    assert absent.returncode != 0

    out = tmp_path / "gpu-check.json"
    proc = _run([python, REPO / "bench" / "gpu_check" / "run.py", "--carry", carry, "--devices", "cpu", "--rounds", "2",
                 "--out", out], timeout=1500, cwd=REPO, env=env)
    assert "gpu-check: carried size " in proc.stdout and "of 64 MiB" in proc.stdout
    result = json.loads(out.read_text())
    assert result["versions"]["scikit-learn"] is None  # the server read the digits export
    assert result["versions"]["flwr_from"].startswith(str(carry / "site"))  # flwr came from the wheelhouse
    assert result["carried_bytes"] <= 64 * 2**20
    run = result["runs"]["cpu"]
    assert run["status"] == "completed" and run["rounds"] == 2 and run["clients_trained"] == [2, 2]
    assert run["generation"]["images"] == 1000 and run["generation"]["images_per_s"] > 0
    assert run["augmented_training"]["images"] == 2 * 1000 and run["augmented_training"]["images_per_s"] > 0
    assert run["seconds_per_round"] > 0 and run["gpu_memory"] is None
    assert run["processes_left_and_killed"] == []
    assert np.isfinite(run["test_accuracy"]).all()
