"""The GPU check: the whole app through Flower's deployment runtime, on a machine without internet.

    python bench/gpu_check/run.py --out "$OUT/gpu-check.json"        # on the lent GPU machine
    python bench/gpu_check/run.py --devices cpu --carry /tmp/carry   # a rehearsal on a CPU machine

Needs only Python with torch (and what the GPU machines have besides: docs/gpu-check.md) and the folder
bench/gpu_check/build.py wrote here (--carry, default .gpu_check/). It

1. refuses to go on if that folder exceeds 64 MiB or was built for another Python version;
2. installs every carried wheel whose distribution is not already there at that version, with
   `pip install --no-index --no-deps --target <carry>/site` (nothing of the machine's own environment
   changes; every process below gets the folder first on PYTHONPATH and its bin/ on PATH);
3. per device (cuda then cpu where there is a GPU, else cpu): starts a SuperLink and two SuperNodes on
   127.0.0.1 (insecure, no Ray; each node trains on its own exported digits folder), runs the app with
   genfl-deploy-run for --rounds rounds, the ServerApp generating the synthetic set (no cache) and
   training the augmented model on that device, samples the GPU's memory while it runs, stops every
   process by PID, and reads the run's metrics.json;
4. writes one JSON: seconds per round, generation and augmented-training throughput, GPU memory, the
   same run on the CPU and the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 64 * 2**20
WEIGHTS = REPO / "generation" / "weights" / "class_conditional_digits-public"  # committed: travels with the tree
CONNECTION = "gpucheck"


def say(text: str) -> None:
    print(f"gpu-check: {text}", flush=True)


def fail(text: str, code: int = 2) -> None:
    print(f"gpu-check: FAILED: {text}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def size_of(folder: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*")
               if f.is_file() and not any(part in skip for part in f.relative_to(folder).parts))


# -- 1. the carried folder ------------------------------------------------------------------------
def check_carry(carry: Path) -> dict:
    manifest_file = carry / "manifest.json"
    if not manifest_file.is_file():
        fail(f"{manifest_file} not found: run `python bench/gpu_check/build.py` where there is internet, then carry {carry}")
    manifest = json.loads(manifest_file.read_text())
    carried = size_of(carry, skip=("site", "runs"))  # what run.py adds there on this machine does not travel
    say(f"carried size {carried / 2**20:.1f} MiB ({carried} bytes) of {LIMIT_BYTES / 2**20:.0f} MiB: {carry}")
    if carried > LIMIT_BYTES:
        fail(f"{carry} is {carried / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB that may be carried")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python_version"] != here:
        fail(f"the wheels are for CPython {manifest['python_version']}, this is {here} ({sys.executable}): rebuild with "
             f"`python bench/gpu_check/build.py --python-version {here} --force`")
    manifest["carried_bytes"] = carried
    return manifest


# -- 2. install what is missing -------------------------------------------------------------------
def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(carry: Path, site: Path) -> dict:
    """Carried wheels whose distribution is absent or at another version go into ``site``."""
    wanted = [line.split("==") for line in (carry / "wheelhouse" / "install.txt").read_text().split()]
    sys.path.insert(0, str(site))  # a rerun finds what an earlier one installed
    importlib.invalidate_caches()
    present = {name: installed_version(name) for name, _ in wanted}
    missing = [f"{name}=={version}" for name, version in wanted if present[name] != version]
    say(f"{len(wanted) - len(missing)} of {len(wanted)} carried distributions already here; installing {len(missing)} into {site}")
    if missing:
        site.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--quiet",
                               "--find-links", str(carry / "wheelhouse"), "--target", str(site), *missing],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            fail(f"pip install --no-index from {carry / 'wheelhouse'} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
        say(f"installed in {time.monotonic() - started:.1f} s")
    return {"installed": missing, "already_present": sorted(f"{n}=={v}" for n, v in wanted if present[n] == v)}


def environment(site: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join([str(site / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PYTHONUNBUFFERED="1", MALLOC_ARENA_MAX="2")
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


_VERSIONS = """
import importlib.metadata as m, json, sys, torch
import flwr, diffusers, hydra, matplotlib, genfl_cli.deploy_run  # what the run imports, from where
try:
    import sklearn; sk = sklearn.__version__
except ImportError:
    sk = None
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                  "flwr": m.version("flwr"), "diffusers": m.version("diffusers"), "hydra-core": m.version("hydra-core"),
                  "scikit-learn": sk, "flwr_from": flwr.__file__}))
"""


def versions(env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _VERSIONS], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"the app's imports fail after the install: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 3. one deployment ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


class GpuMemory:
    """Peak GPU memory while a run goes on, sampled twice a second: the whole device and, with
    nvidia-smi, per kind of process (ServerApp, ClientApps)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.smi = shutil.which("nvidia-smi")
        self.baseline_mib = self.peak_mib = None
        self.peak_by_kind: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _device_used_mib(self) -> float | None:
        if self.smi:
            out = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True).stdout.strip()
            return float(out) if out else None
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def _by_kind(self) -> None:
        if not self.smi:
            return
        import psutil

        out = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        for line in out.strip().splitlines():
            try:
                pid, used = (int(float(x)) for x in line.split(","))
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except Exception:  # a process that just ended, or a line nvidia-smi could not fill
                continue
            kind = "serverapp" if "serverapp" in cmdline else "clientapp" if "clientapp" in cmdline else "other"
            self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0.0), float(used))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            used = self._device_used_mib()
            if used is not None:
                self.peak_mib = max(self.peak_mib or 0.0, used)
            self._by_kind()

    def __enter__(self):
        if self.enabled:
            self.baseline_mib = self._device_used_mib()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join(timeout=10)

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        return {"source": "nvidia-smi" if self.smi else "torch.cuda.mem_get_info (device-wide)",
                "baseline_mib": self.baseline_mib, "peak_used_mib": self.peak_mib,
                "peak_above_baseline_mib": None if self.peak_mib is None or self.baseline_mib is None
                else round(self.peak_mib - self.baseline_mib, 1),
                "peak_per_process_mib": self.peak_by_kind or None}


def stop_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def sweep(flwr_home: Path) -> list[int]:
    """Anything still carrying this run's FLWR_HOME (the SuperLink's and nodes' children): killed by PID."""
    import psutil

    left = []
    for p in psutil.process_iter(["environ"]):
        try:
            if (p.info["environ"] or {}).get("FLWR_HOME") == str(flwr_home) and p.pid != os.getpid():
                left.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in left]


def deploy_and_run(device: str, carry: Path, site: Path, root: Path, args) -> dict:
    """SuperLink + two SuperNodes on loopback, one genfl-deploy-run; the run's figures."""
    root.mkdir(parents=True)
    flwr_home = root / "flwr-home"
    flwr_home.mkdir()
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = environment(site, {"FLWR_HOME": str(flwr_home), "GENFL_DIGITS_EXPORT": str(carry / "data" / "digits.npz")})
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU run touches no GPU, not even for a context
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(root / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        procs.append(proc)
        return proc

    results = root / "results"
    overrides = [f"num_rounds={args.rounds}", "federation.expected_nodes=2", f"server.device={device}",
                 f"client.device={device}", f"generator.device={device}", "generation.cache_dir=null",
                 f"generator.weights={WEIGHTS}", "generator.pretrain_if_missing=false",
                 f"generation.per_class={args.per_class}", "generator_check.on_fail=null", f"output.dir={results}"]
    if device == "cpu" and args.cpu_threads:
        overrides += [f"server.threads={args.cpu_threads}", f"client.threads={args.cpu_threads}"]
    gpu = GpuMemory(enabled=device == "cuda")
    started = time.monotonic()
    try:
        with gpu:
            link = start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port),
                                       "--isolation", "subprocess", "--disable-runtime-dependency-installation"])
            wait_listening(port, link, "flower-superlink", root / "superlink.log")
            for i in range(2):
                data_path = (carry / "data" / f"partition-{i}").resolve()
                start(f"supernode-{i}", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                         "--port", str(free_port()), "--node-config", f'data-path="{data_path}"'])
            say(f"{device}: SuperLink on 127.0.0.1:{port}, 2 SuperNodes; running {args.rounds} rounds")
            with open(root / "deploy-run.log", "w") as log:
                try:
                    proc = subprocess.run([sys.executable, "-m", "genfl_cli.deploy_run", CONNECTION, *overrides], cwd=REPO,
                                          env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
                    code = proc.returncode
                except subprocess.TimeoutExpired:
                    code = None
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
        leftovers = sweep(flwr_home)
    wall = time.monotonic() - started
    log_tail = (root / "deploy-run.log").read_text(errors="replace")[-3000:]
    if code != 0:
        fail(f"{device}: genfl-deploy-run {'timed out after %d s' % args.timeout if code is None else f'exited {code}'}; "
             f"logs in {root}:\n{log_tail}", code=1)
    metrics = json.loads((results / "metrics.json").read_text())
    return {**figures(metrics), "wall_seconds_all": round(wall, 1), "gpu_memory": gpu.summary(),
            "processes_left_and_killed": leftovers, "logs": str(root)}


def figures(metrics: dict) -> dict:
    """Seconds per round and the two throughputs, from the run's metrics.json."""
    rows = [r for r in metrics["rounds"] if r["round"] > 0]
    cfg = metrics["config"]
    generated = sum(r.get("images_synthesized") or 0 for r in rows)
    generation_s = sum(r.get("generation_seconds") or 0.0 for r in rows)
    aug = cfg["augmented"]
    trained = sum((r.get("images_used") or 0) * aug["epochs"] for r in rows) if aug["max_steps"] is None else None
    aug_s = sum(r.get("augmented_train_seconds") or 0.0 for r in rows)
    later = [r["round_seconds"] for r in rows[1:] if r.get("round_seconds") is not None]
    return {
        "status": metrics["status"], "run_id": metrics["run_id"], "rounds": len(rows),
        "clients_trained": [r.get("clients_trained") for r in rows],
        "test_accuracy": [r.get("test_accuracy") for r in rows],
        "round_seconds": [r.get("round_seconds") for r in rows],
        # round 1 also holds the histogram survey, the generation and the generator check
        "first_round_seconds": rows[0].get("round_seconds") if rows else None,
        "seconds_per_round": round(sum(later) / len(later), 2) if later else None,
        "generation": {"images": generated, "seconds": round(generation_s, 3),
                       "images_per_s": round(generated / generation_s, 1) if generation_s else None},
        "augmented_training": {"images": trained, "seconds": round(aug_s, 3),
                               "images_per_s": round(trained / aug_s, 1) if trained and aug_s else None},
    }


def ratio(a, b) -> float | None:
    return round(a / b, 2) if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_check/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--carry", type=Path, default=REPO / ".gpu_check", help="the folder build.py wrote")
    parser.add_argument("--site", type=Path, default=None, help="where to install the wheels (default <carry>/site)")
    parser.add_argument("--devices", default=None, help="comma-separated, in order (default: cuda,cpu with a GPU, else cpu)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=100, help="synthetic images per class (generation.per_class)")
    parser.add_argument("--cpu-threads", type=int, default=None, help="server/client torch threads of the cpu run (default: conf/'s)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds one device's run may take")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (default bench/results/gpu-check-<device>.json)")
    parser.add_argument("--note", default=None, help="a line stored in the JSON (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 also holds the generation; later rounds give seconds per round)")
    carry = args.carry.resolve()
    site = (args.site or carry / "site").resolve()
    manifest = check_carry(carry)
    import torch

    cuda = torch.cuda.is_available()
    devices = args.devices.split(",") if args.devices else (["cuda", "cpu"] if cuda else ["cpu"])
    if "cuda" in devices and not cuda:
        fail("--devices names cuda, but torch sees no GPU here")
    install_record = install(carry, site)
    found = versions(environment(site))
    say(f"python {found['python']}, torch {found['torch']}, flwr {found['flwr']} ({found['flwr_from']}), diffusers "
        f"{found['diffusers']}, scikit-learn {found['scikit-learn'] or 'absent'}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    gpu_name = torch.cuda.get_device_name(0) if cuda else None
    label = "cuda-" + gpu_name.split()[1].lower() if cuda and len(gpu_name.split()) > 1 else ("cuda" if cuda else "cpu")
    out = args.out or REPO / "bench" / "results" / f"gpu-check-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = {}
    result = {
        "what": "bench/gpu_check/run.py: the whole app (genfl-deploy-run, SuperLink + 2 SuperNodes on 127.0.0.1, "
                "no Ray), the ServerApp generating and training the augmented model on each device in turn",
        "note": args.note,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": gpu_name or "cpu only", "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "versions": found,
        "carried_bytes": manifest["carried_bytes"], "carried_limit_bytes": LIMIT_BYTES,
        "install": {"installed": len(install_record["installed"]), "already_present": len(install_record["already_present"])},
        "settings": {"rounds": args.rounds, "per_class": args.per_class, "nodes": 2, "dataset": "digits",
                     "generator": "class_conditional (committed weights)", "cpu_threads": args.cpu_threads or "conf/ default"},
        "runs": runs,
    }
    for device in devices:  # the JSON is rewritten after each device: a run cut short keeps the ones before
        runs[device] = deploy_and_run(device, carry, site, carry / "runs" / f"{stamp}-{device}", args)
        run = runs[device]
        say(f"{device}: {run['status']}; {run['seconds_per_round']} s per round after round 1 ({run['first_round_seconds']} s); "
            f"generation {run['generation']['images_per_s']} images/s; augmented training "
            f"{run['augmented_training']['images_per_s']} images/s")
        if "cuda" in runs and "cpu" in runs:
            gpu_run, cpu_run = runs["cuda"], runs["cpu"]
            result["ratios"] = {
                "seconds_per_round_cpu_over_cuda": ratio(cpu_run["seconds_per_round"], gpu_run["seconds_per_round"]),
                "first_round_cpu_over_cuda": ratio(cpu_run["first_round_seconds"], gpu_run["first_round_seconds"]),
                "generation_cuda_over_cpu": ratio(gpu_run["generation"]["images_per_s"], cpu_run["generation"]["images_per_s"]),
                "augmented_training_cuda_over_cpu": ratio(gpu_run["augmented_training"]["images_per_s"],
                                                          cpu_run["augmented_training"]["images_per_s"]),
            }
        out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
