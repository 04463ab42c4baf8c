"""Build, here (online, full install), everything the GPU check carries to a lent GPU machine.

    python bench/gpu_check/build.py                       # for the GPU machines: CPython 3.12, x86_64
    python bench/gpu_check/build.py --python-version 3.11 --out /tmp/carry   # e.g. for a CPU rehearsal

The GPU machines have torch, torchvision, transformers, accelerate and huggingface_hub, no internet,
and no flwr, diffusers, Hydra, matplotlib or scikit-learn. This writes the folder --out (default
.gpu_check/, git-ignored) holding:

- wheelhouse/: every wheel the app needs beyond what the GPU machine has, for one CPython version on
  manylinux x86_64, with install.txt (name==version, one a line). Resolved together with the GPU
  machine's packages pinned, so that the versions fit; the big ones it certainly has (BOX_PROVIDES at the
  versions that resolution gives) are left out. Also left out: uv (flwr calls it only to install a run's
  dependencies, which the check turns off; 17 MB). antlr4-python3-runtime 4.9.3 (Hydra) exists only as
  an sdist and is built into a pure-Python wheel here.
- data/: the digits partitions of two SuperNodes as image folders (genfl-export-partitions) and the
  server's digits (pixels, labels, the fixed split) as digits.npz: scikit-learn and its SciPy are 45 MB
  of wheels, too much to carry (genfl_torch/digits.py reads the file named by $GENFL_DIGITS_EXPORT).
- manifest.json: the Python version and platforms built for, the wheels, the data, and the carried size.

It prints the carried size and exits non-zero if it exceeds the 64 MiB that may travel with the working
tree. Evidence for the default --python-version: bench/results/throughput-cuda-h100.json, written on a
lent H100, records Python 3.12.3; bench/gpu_check/run.py refuses to start on any other version.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LIMIT_BYTES = 64 * 2**20  # what the device tool carries of git-ignored paths
DEFAULT_OUT = REPO / ".gpu_check"
NUM_NODES = 2
# The GPU machine's Python packages, as told (docs/gpu-check.md). Their dependency closure is resolved
# here for the target; of it, BOX_PROVIDES (hard dependencies of these, big) are not carried.
BOX_PINS = ("transformers==5.17.0", "huggingface_hub==1.33.0", "accelerate==1.15.0")
BOX_PROVIDES = {"numpy", "pillow", "huggingface-hub", "hf-xet", "safetensors", "regex", "pyyaml", "psutil",
                "tokenizers", "transformers", "accelerate"}
NEVER_CARRIED = {"torch", "torchvision", "triton", "uv"}  # plus nvidia-* (CUDA wheels)
# What the app imports beyond the GPU machine's packages (pyproject.toml's dependencies, less
# scikit-learn and flwr-datasets: the data travels as files). diffusers 0.42.1 is known to work with
# huggingface_hub 1.33; plain flwr: the deployment runtime needs no Ray.
APP_REQUIREMENTS = ("flwr>=1.42,<1.43", "diffusers==0.42.1", "hydra-core>=1.3", "matplotlib>=3.7", "cryptography>=42",
                    "tqdm>=4.66", "psutil>=5.9", "antlr4-python3-runtime==4.9.3")
PURE_PYTHON_OK = ("fonttools",)  # its compiled parts are optional speed-ups: the universal wheel is 5 MB smaller
PLATFORMS = ("manylinux2014_x86_64", "manylinux1_x86_64", "manylinux2010_x86_64",
             *(f"manylinux_2_{minor}_x86_64" for minor in (5, 12, 17, 24, 27, 28, 31, 34)))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return canonical(name), version


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        noise = re.compile(r"^WARNING: Location .* is ignored")
        tail = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if not noise.match(line))[-3000:]
        raise SystemExit(f"build: `pip {' '.join(args[:3])} ...` failed ({proc.returncode}):\n{tail}")


def target_args(python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for tag in PLATFORMS:
        args += ["--platform", tag]
    return args


def resolve(requirements: list[str], python_version: str, find_links: Path, work: Path) -> dict[str, str]:
    """{name: version} that pip resolves for ``requirements`` on the target (no download of the wheels)."""
    report = work / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--target", str(work / "t"),
        "--find-links", str(find_links), *target_args(python_version), *requirements)
    installs = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def build_wheelhouse(wheelhouse: Path, python_version: str, work: Path) -> dict:
    wheelhouse.mkdir(parents=True)
    # Hydra's parser runtime exists only as an sdist: build it (pure Python, any CPython 3).
    pip("wheel", "--no-deps", "--quiet", "-w", str(wheelhouse), "antlr4-python3-runtime==4.9.3")
    # The app together with the GPU machine's packages (torch aside: accelerate's pin would pull it in,
    # and the machine has it), so that every version fits theirs.
    pins = [p for p in BOX_PINS if not p.startswith("accelerate")]
    resolved = resolve([*APP_REQUIREMENTS, *pins], python_version, wheelhouse, work)
    box_alone = resolve(pins + ["pillow", "psutil"], python_version, wheelhouse, work)
    left_out = {n: v for n, v in resolved.items() if n in BOX_PROVIDES and box_alone.get(n) == v}
    carried = {n: v for n, v in resolved.items()
               if n not in left_out and n not in NEVER_CARRIED and not n.startswith("nvidia-")}
    pip("download", "--no-deps", "--quiet", "--dest", str(wheelhouse), "--find-links", str(wheelhouse),
        *target_args(python_version), *[f"{n}=={v}" for n, v in sorted(carried.items()) if n != "antlr4-python3-runtime"])
    for name in PURE_PYTHON_OK:
        if name in carried:
            for wheel in wheelhouse.glob(f"{name}-*.whl"):
                wheel.unlink()
            pip("download", "--no-deps", "--quiet", "--dest", str(wheelhouse), "--only-binary=:all:",
                "--platform", "any", "--python-version", python_version, f"{name}=={carried[name]}")
    got = {wheel_name_version(w.name): w for w in wheelhouse.glob("*.whl")}
    missing = sorted(f"{n}=={v}" for n, v in carried.items() if (n, v) not in got)
    if missing:
        raise SystemExit(f"build: no wheel came for {', '.join(missing)}")
    (wheelhouse / "install.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(carried.items())))
    return {"carried": carried, "left_out_for_the_gpu_machine": left_out,
            "omitted": {"uv": "flwr runs it only to install a run's dependencies; the check disables that"}}


def export_data(data: Path) -> dict:
    """Two SuperNodes' partitions as image folders and the server's digits as digits.npz (default split)."""
    from server_app.partitions import export
    from server_app.config import load_config
    from genfl_torch.digits import export_digits

    data.mkdir(parents=True)
    counts = export(data, NUM_NODES, None, [])
    ds = load_config([]).dataset
    export_digits(data / "digits.npz", ds.split_seed, ds.test_fraction, ds.public_fraction)
    return {"partitions": {f"partition-{i}": sum(c) for i, c in counts.items()}, "digits": "digits.npz"}


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="CPython X.Y of the GPU machine (default 3.12)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder to write (default .gpu_check/)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version takes X.Y, e.g. 3.12 (got {args.python_version!r})")
    out = args.out.resolve()
    if out.exists():
        if not args.force:
            parser.error(f"{out} exists; pass --force to rebuild it")
        shutil.rmtree(out)
    print(f"build: wheels for CPython {args.python_version} on manylinux x86_64 -> {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-build-") as tmp:
        wheels = build_wheelhouse(out / "wheelhouse", args.python_version, Path(tmp))
    data = export_data(out / "data")
    manifest = {
        "python_version": args.python_version,
        "platforms": list(PLATFORMS),
        "built_with": {"python": platform.python_version(), "machine": platform.machine()},
        "gpu_machine_assumed": list(BOX_PINS) + ["torch", "torchvision"],
        **wheels,
        "data": data,
        "limit_bytes": LIMIT_BYTES,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = size_of(out)
    manifest["carried_bytes"] = total
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = size_of(out)
    wheel_bytes = size_of(out / "wheelhouse")
    print(f"build: {len(wheels['carried'])} wheels ({wheel_bytes / 2**20:.1f} MiB), data ({size_of(out / 'data') / 2**20:.2f} MiB); "
          f"carried size {total / 2**20:.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB")
    if total > LIMIT_BYTES:
        print(f"build: FAILED: {out} is {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB that may be carried",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
