"""A built wheel, installed in a fresh venv outside the source tree, runs `genfl-run`: conf/ and the
generator weights travel as package data, and the app runs from the installation, not a checkout."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import flwr
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_wheel_installed_outside_the_source_tree_runs_one_round(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True)
    wheel = next(dist.glob("genfl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "conf/config.yaml" in names and "conf/aggregation/fedavg.yaml" in names
    assert any(n.startswith("generation/weights/") and n.endswith(".safetensors") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(next(venv.glob("lib/python*/site-packages")))
    # torch, diffusers, ... come from this environment's site-packages (a plain path: its editable
    # install of this checkout is not activated); the wheel and Flower's executables are the venv's own.
    # Installed before the shared folder is visible, or pip would take this environment's flwr as
    # installed and leave out its executables (flower-superlink, flwr, ...).
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel),
                    f"flwr=={flwr.__version__}"], check=True, capture_output=True)
    (site / "shared-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import conf, server_app.app; print(conf.CONF_DIR); "
                            "print(server_app.app.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout

    run_dir = tmp_path / "run"
    proc = subprocess.run([str(venv / "bin" / "genfl-run"), f"output.dir={run_dir}", "num_rounds=1",
                           "federation.num_clients=2", "generation.per_class=5", "generation.cache_dir=null"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["status"] == "completed" and result["rounds"][-1]["round"] == 1
    assert result["generation"]["images_synthesized"] == 50  # the shipped generator weights were found
    assert (run_dir / "flwr-app" / "pyproject.toml").is_file()  # the app ran from the installation
