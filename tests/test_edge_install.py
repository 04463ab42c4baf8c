"""The client-only install: the ClientApp imports nothing outside requirements/edge.txt, also when it
trains on a node's own image folder (the built-in-partition path may import more: it is never used there)."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_ONLY = ["diffusers", "transformers", "accelerate", "ray", "hydra", "omegaconf", "flwr_datasets",
               "datasets", "sklearn", "matplotlib", "pandas", "pyarrow", "safetensors"]

_PROBE = """
import json, sys
from flwr.app import Context, Message, Metadata, RecordDict, ConfigRecord
import client_app.app as client
imported_at_start = sorted(m for m in {server_only} if m in sys.modules)
config = ConfigRecord({config})
metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=0.0, ttl=60.0, message_type="query.label_histogram")
context = Context(run_id=1, node_id=7, node_config={{"data-path": {folder!r}}}, state=RecordDict(), run_config={{}})
reply = client.app(Message(metadata=metadata, content=RecordDict({{"config": config}})), context)
print(json.dumps({{"start": imported_at_start, "after": sorted(m for m in {server_only} if m in sys.modules),
                  "histogram": list(reply.content["histogram"]["label-histogram"])}}))
"""


def _requirements() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements/edge.txt").read_text().splitlines()]
    return {re.split(r"[<>=\[ ]", line)[0].lower(): line for line in lines if line}


def test_clientapp_on_a_data_path_node_imports_no_server_only_package(tmp_path):
    from server_app.build import client_config as train_config
    from server_app.config import load_config
    from genfl_cli.export_partitions import export

    export(tmp_path, 3, [0], [])
    config = {k: v for k, v in train_config(load_config([])).items()}
    code = _PROBE.format(server_only=SERVER_ONLY, config=repr(config), folder=str(tmp_path / "partition-0"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["start"] == [] and result["after"] == []
    assert sum(result["histogram"]) == len(list((tmp_path / "partition-0").rglob("*.png")))


def test_edge_requirements_are_flwr_without_simulation_plus_what_the_clientapp_imports():
    requirements = _requirements()
    assert set(requirements) == {"flwr", "torch", "torchvision", "numpy", "pillow"}
    assert "[" not in requirements["flwr"], "flwr[simulation] pulls Ray onto edge boxes"


def test_edge_requirements_agree_with_the_full_install():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    full = {re.split(r"[<>=\[ ]", d)[0].lower(): d for d in deps}
    for name, line in _requirements().items():
        assert name in full, f"{name} is in requirements/edge.txt but not in pyproject.toml"
        bounds = re.sub(r"^[A-Za-z0-9_.-]+(\[[^\]]*\])?", "", full[name])
        assert line.endswith(bounds), f"{line!r} vs pyproject's {full[name]!r}: keep the version bounds equal"
