"""`accelerate launch -m genfl_cli.generate` with two CPU processes writes the very cache entry
that one process writes: the plan is split by class and a class's images depend on nothing else."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["generation.per_class=12", "generator.sampling_steps=5"]


def _entry(cache: Path) -> dict:
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 1, files  # one entry, no shard left behind
    return load_file(str(files[0]))


def test_two_processes_write_the_entry_one_process_writes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "genfl_cli.generate", f"generation.cache_dir={tmp_path / 'one'}", *OVERRIDES],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    sharded = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                              "--dynamo_backend", "no", "-m", "genfl_cli.generate", f"generation.cache_dir={tmp_path / 'two'}",
                              *OVERRIDES], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert sharded.stdout.count("120 images (1, 8, 8) generated into") == 1  # reported once, by the main process
    one, two = _entry(tmp_path / "one"), _entry(tmp_path / "two")
    assert torch.equal(one["images"], two["images"]) and torch.equal(one["labels"], two["labels"])
    assert one["labels"].bincount().tolist() == [12] * 10
