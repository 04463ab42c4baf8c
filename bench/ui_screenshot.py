"""Capture the MLflow UI comparing a small sweep's runs, in a real headless browser: docs/img/mlflow-compare.png.

    python bench/ui_screenshot.py                          # sweep (if needed), UI, capture -> docs/img/mlflow-compare.png
    python bench/ui_screenshot.py --sweep-dir multirun/ui  # keep the sweep somewhere (re-used if complete)

What it does, so that the picture can be redone whenever MLflow's UI changes:

1. runs `genfl-sweep strategy=base_only,genfl num_rounds=5 federation.num_clients=10 partition.alpha=0.1
   tracking=mlflow tracking.experiment=genfl-sweep` into ``--sweep-dir`` (its jobs named by strategy alone;
   completed jobs are skipped when the folder is re-used; ~5 min on 2 cores);
2. starts `mlflow ui` on 127.0.0.1 (a free port) on the sweep's SQLite store;
3. opens the experiment's runs in the chart view (both runs' test accuracy and loss by round) in headless
   Chromium, driven by Playwright, and saves a PNG (quantised to stay small);
4. stops the UI server (its process group, by PID) whatever happened.

Needs the tracking extra (`pip install -e ".[tracking]"`), Playwright in the venv (`pip install playwright`;
no browser download: it drives the system's Chromium, `apt-get install chromium` on Debian, or any
Chromium/Chrome given by ``--chromium``). Nothing here is needed by a run or the tests.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXED = ["num_rounds=5", "federation.num_clients=10", "partition.alpha=0.1", "tracking=mlflow", "tracking.experiment=genfl-sweep"]
# Job folders (and so MLflow run names) named by the varied key alone: "strategy=base_only", "strategy=genfl".
EXCLUDE = ["experiment", "output.dir", "output.root", "generation.cache_dir", "dataset.root",
           *(o.split("=")[0] for o in FIXED)]
SWEEP = ["strategy=base_only,genfl", *FIXED, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(EXCLUDE)}]"]
METRIC = "test_accuracy"


def run_sweep(sweep_dir: Path) -> None:
    """The two-job sweep (its completed jobs are skipped when re-run on the same folder)."""
    command = [sys.executable, "-m", "genfl_cli.sweep", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]
    print("ui_screenshot: running", " ".join(["genfl-sweep", *SWEEP, f"hydra.sweep.dir={sweep_dir}"]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow ui` in its own process group (it starts workers), so that stopping it stops them all."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        raise SystemExit("ui_screenshot: mlflow not found: pip install -e \".[tracking]\"")
    with open(log, "w") as out:
        proc = subprocess.Popen([mlflow, "ui", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300  # a busy 2-core machine: minutes
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ui_screenshot: mlflow ui exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    stop(proc)
    raise SystemExit(f"ui_screenshot: mlflow ui did not answer on port {port} within 300 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def experiment_of(store: Path) -> tuple[str, list[str]]:
    """The sweep's experiment id and its finished runs' ids (the sweep is one experiment)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if len(experiments) != 1:
        raise SystemExit(f"ui_screenshot: expected one experiment in {store}, found {[e.name for e in experiments]}")
    runs = client.search_runs([experiments[0].experiment_id], filter_string="attributes.status = 'FINISHED'")
    if len(runs) < 2:
        raise SystemExit(f"ui_screenshot: the sweep has {len(runs)} finished run(s); it needs 2 (re-run to complete it)")
    return experiments[0].experiment_id, [r.info.run_id for r in runs]


def capture(base: str, experiment: str, out: Path, chromium: str, width: int, height: int) -> None:
    """The experiment's runs in MLflow's chart view, filtered to the test metrics, as a quantised PNG.

    MLflow 3 opens an experiment in its GenAI view: switch to "Model training" first (the switch is
    remembered), close the assistant panel if there is one, then type the metric into the chart search."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(f"{base}/#/experiments/{experiment}", wait_until="load", timeout=120_000)
            page.get_by_text("Model training").first.click(timeout=120_000)
            page.goto(f"{base}/#/experiments/{experiment}/runs?compareRunsMode=CHART", wait_until="load")
            search = page.get_by_placeholder("Search metric charts")
            search.wait_for(timeout=120_000)
            assistant = page.get_by_text("MLflow Assistant")
            if assistant.count():  # its panel takes a third of the page; its close button is the last in its header
                assistant.first.locator("xpath=ancestor::div[.//button][1]").locator("button").last.click()
            search.fill(METRIC.split("_")[0] + "_")  # test_accuracy and test_loss
            page.get_by_text(METRIC).first.wait_for(timeout=60_000)
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= 2",
                                   timeout=120_000)  # the curves are drawn (plotly), not a loading spinner
            page.wait_for_timeout(3000)  # the charts animate in
            png = page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": min(height, 700)})
        finally:
            browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, help="the sweep's folder (default: a temporary one, removed after)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "mlflow-compare.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"), help="the browser binary (default: chromium on PATH)")
    parser.add_argument("--size", default="1400x860", help="viewport WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    width, height = map(int, args.size.split("x"))
    temporary = args.sweep_dir is None
    sweep_dir = (Path(tempfile.mkdtemp(prefix="genfl-ui-")) if temporary else args.sweep_dir).resolve()
    try:
        run_sweep(sweep_dir)
        store = sweep_dir / "mlflow.db"
        experiment, runs = experiment_of(store)
        port = _free_port()
        ui = start_ui(store, port, Path(tempfile.gettempdir()) / "genfl-mlflow-ui.log")  # outlives a temporary sweep
        try:
            capture(f"http://127.0.0.1:{port}", experiment, args.out, args.chromium, width, height)
        finally:
            stop(ui)
        print(f"ui_screenshot: {args.out} ({args.out.stat().st_size // 1024} KiB) from {len(runs)} runs")
    finally:
        if temporary:
            shutil.rmtree(sweep_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
