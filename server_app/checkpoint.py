"""Per-round checkpoints of a run, written atomically, and what resuming needs from them.

``<run dir>/checkpoint/latest.pkl`` holds the global model, the strategy's state (histogram, plan,
synthetic cache key, benched nodes, base-strategy state, and every node's label histogram with its
node id and partition, so that a resumed run asks only nodes it never heard from: a histogram is a
release of the node's data, made once per run) and the metrics rows so far. No RNG state:
every random draw of a run (sampling, data order, augmentation, generation, server training) comes
from a generator seeded by the seed and the round, so a resumed round draws what it would have.
The exception is DP noise (`aggregation.dp`), which Flower draws from NumPy's unseeded global
generator: a DP run is not reproducible, resumed or not, by design. It is replaced by rename after an fsync, so a crash while writing leaves the previous one
intact. It is a pickle: load only checkpoints this server wrote.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

from server_app.renames import upgraded_config
from server_app.results import CHECKPOINT_DIR, flatten, result_neutral

FORMAT = "genfl-checkpoint/2"  # 2: no RNG states, benched nodes by (kind, id); "survey" added later (optional:
# a checkpoint without it resumes by asking every node for its histogram again, as it used to)


class CheckpointError(RuntimeError):
    """No usable checkpoint to resume from; the message says what to do."""


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / "latest.pkl"


def save(run_dir: Path, *, server_round: int, arrays: dict[str, np.ndarray], strategy: dict, rounds: list[dict],
         config: dict) -> Path:
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "round": server_round,
        "arrays": arrays,
        "strategy": strategy,
        "rounds": rounds,
        "config": config,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="latest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(run_dir: Path, config: dict) -> dict:
    """The checkpoint of ``run_dir``, checked against this run's ``config``."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise CheckpointError(f"output.resume=true but {path} does not exist: nothing to resume; start a new run "
                              "(without output.resume) or point output.dir at an interrupted run's folder")
    try:
        with open(path, "rb") as handle:
            payload = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err}); start a new run") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    payload["config"] = upgraded_config(payload["config"])  # a run started before a key was renamed resumes
    differences = _differences(payload["config"], config)
    if differences:
        switched = [g for g in _switched_on(payload["config"], config) if any(d.split(".")[0] == g for d in differences)]
        named = [d for d in differences if d.split(".", 1)[0] not in switched] + [f"{g} (on now, off in the checkpoint)"
                                                                               for g in switched]
        how = (f"resume as it ran with genfl-run --resume {run_dir} " + " ".join(f"{g}.enabled=false" for g in switched)
               if switched and len(named) == len(switched) else "resume with the original settings (genfl-run --resume DIR)")
        raise CheckpointError(f"cannot resume {run_dir}: the config differs from the checkpoint's in {', '.join(named)}; {how}")
    return payload


def _switched_on(saved: dict, current: dict) -> list[str]:
    """Top-level groups whose ``enabled`` switch is on now and was off, or not there yet, in the checkpoint
    (a group that came to conf/ on by default, such as generator_check)."""
    return sorted(g for g, group in current.items() if isinstance(group, dict) and group.get("enabled") is True
                  and not (isinstance(saved.get(g), dict) and saved[g].get("enabled") is True))


def _differences(saved: dict, current: dict) -> list[str]:
    """Flattened config keys that differ, except those that do not change results (paths, devices, ...).
    A setting added to conf/ after the checkpoint was written is no difference while it is off (null or
    false), nor is one inside a group whose ``enabled`` is false: an upgrade must not strand interrupted
    runs (a group added on by default is named, and `load` says how to resume without it)."""
    saved, current = flatten(saved), flatten(current)
    keys = sorted(k for k in set(saved) | set(current) if not result_neutral(k))

    def off(key: str) -> bool:
        parts = key.split(".")
        switches = [".".join(parts[:i]) + ".enabled" for i in range(1, len(parts))]
        return current.get(key, "<missing>") in (None, False) or any(
            current.get(s) is False and s != key for s in switches)

    added_off = {k for k in keys if k not in saved and off(k)}
    return [k for k in keys if k not in added_off and saved.get(k, "<missing>") != current.get(k, "<missing>")]
