"""Throughput of the project's hot paths against raw baselines of the same work, in one run, on one device.

(a) generation through generation/ against a bare diffusers pipeline call with the same settings;
(f) prompt diversity: several prompt templates and a per-image guidance scale drawn from [1, 5] against
    one template and a fixed scale, on the same pipeline (and one pipeline call per image, for comparison);
(b) augmented-model training through genfl_torch.train (the server's path) against a minimal loop over
    tensors already on the device; (e) the clients' training path the same way, at the clients' batch size;
(c) an image-cache hit against generating the same plan;
(d) (--simulation, needs flwr) a GenFL round against a FedAvg round in a real simulation, with the
    augmented model overlapped with the clients and, for comparison, after them.

    python bench/throughput.py                         # CPU: tiny SD, digits-size training, offline generator
    python bench/throughput.py --simulation            # plus (d)
    python bench/throughput.py --sd15 --device cuda    # GPU: SD v1-5 architecture with random weights, CIFAR size
    python bench/throughput.py --prompt-cost-only      # only (f), with or without --sd15

Writes bench/results/throughput-<device>.json (device, versions, figures, ratios) and prints the ratios.
Imports only the plain-PyTorch and generation layers unless --simulation is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the offline SD folder builders live with the tests

from generation.cache import generate_cached  # noqa: E402
from generation.prompts import CIFAR10_CLASS_NAMES  # noqa: E402
from generation.sd_draws import image_seed  # noqa: E402
from generation.text_to_image import TextToImageGenerator  # noqa: E402
from genfl_torch.data import Split, as_float  # noqa: E402
from genfl_torch.model import seeded_model  # noqa: E402
from genfl_torch.train import TrainSettings, evaluate, train  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


# -- (a) generation ----------------------------------------------------------------------------
def generation(folder: Path, device: torch.device, *, resolution: int, steps: int, batch: int, images: int,
               target: int, repeats: int) -> dict:
    """Images/s of TextToImageGenerator.generate vs pipe(...) on the same prompts, seeds, settings."""
    generator = TextToImageGenerator(
        model=str(folder), class_names=CIFAR10_CLASS_NAMES, prompt_templates=["a photo of a {name}"],
        class_descriptions=None, negative_prompt="blurry, low quality", guidance_scale=7.5, guidance_scale_range=None,
        num_inference_steps=steps, scheduler="dpm++",
        generation_resolution=resolution, target_size=target, target_channels=3, batch_size=batch,
        device=str(device), local_files_only=True, safety_checker=False)
    pipe = generator.load()  # both sides use the very same pipeline object
    plan = {3: images}

    def project():
        generator.generate(plan, seed=0)

    def raw():
        for start in range(0, images, batch):
            n = min(batch, images - start)
            seeds = [torch.Generator().manual_seed(image_seed(0, 3, start + i)) for i in range(n)]
            with torch.inference_mode():
                pipe(prompt=[generator.prompts[3][0]] * n, negative_prompt=["blurry, low quality"] * n,
                     height=resolution, width=resolution, num_inference_steps=steps, guidance_scale=7.5,
                     generator=seeds, output_type="pt")

    project(), raw()  # warm-up (cuDNN autotuning, allocator)
    project_s, raw_s = [], []
    for _ in range(repeats):  # interleaved, so drift hits both
        project_s += timed(project, device, 1)
        raw_s += timed(raw, device, 1)
    p, r = images / statistics.median(project_s), images / statistics.median(raw_s)
    return {"settings": {"resolution": resolution, "steps": steps, "batch": batch, "images": images,
                         "guidance_scale": 7.5, "scheduler": "dpm++", "dtype": str(generator.dtype), "target": target},
            "project_images_per_s": round(p, 3), "raw_images_per_s": round(r, 3), "ratio": round(p / r, 3)}


# -- (f) prompt diversity ----------------------------------------------------------------------
DIVERSE_TEMPLATES = ["a photo of a {name}", "a blurry photo of a {name}", "a close-up photo of a {name}",
                     "a photo of a small {name}", "a low-resolution photo of a {name}"]


def prompt_cost(folder: Path, device: torch.device, *, resolution: int, steps: int, batch: int, images: int,
                target: int, repeats: int, per_image_images: int) -> dict:
    """Images/s of one template and guidance 7.5 vs five templates and a scale per image drawn from [1, 5]
    (batched: `PerImageGuidance`), and of the latter made one pipeline call per image (what diffusers'
    single guidance_scale per call would otherwise cost), all on the very same pipeline object."""
    settings = dict(model=str(folder), class_names=CIFAR10_CLASS_NAMES, class_descriptions=None,
                    negative_prompt="blurry, low quality", guidance_scale=7.5, num_inference_steps=steps,
                    scheduler="dpm++", generation_resolution=resolution, target_size=target, target_channels=3,
                    batch_size=batch, device=str(device), local_files_only=True, safety_checker=False)
    single = TextToImageGenerator(**settings, prompt_templates=DIVERSE_TEMPLATES[:1], guidance_scale_range=None)
    diverse = TextToImageGenerator(**settings, prompt_templates=DIVERSE_TEMPLATES, guidance_scale_range=[1, 5])
    per_image = TextToImageGenerator(**settings, prompt_templates=DIVERSE_TEMPLATES, guidance_scale_range=[1, 5])
    pipe = single.load()
    diverse._pipe = per_image._pipe = pipe  # one pipeline for all arms: the same weights, kernels, memory
    per_image._batched_guidance = False  # the fallback: one call per image

    arms = {"single": (single, images), "diverse": (diverse, images), "per_image_calls": (per_image, per_image_images)}
    for generator, count in arms.values():  # warm-up (cuDNN autotuning, allocator)
        generator.generate({3: min(count, batch)}, seed=0)
    assert diverse._batched_guidance, "per-image guidance fell back to one call per image"
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):  # interleaved, so drift hits every arm
        for name, (generator, count) in arms.items():
            seconds[name] += timed(lambda g=generator, n=count: g.generate({3: n}, seed=1), device, 1)
    rate = {name: arms[name][1] / statistics.median(seconds[name]) for name in arms}
    return {"settings": {"resolution": resolution, "steps": steps, "batch": batch, "images": images,
                         "per_image_calls_images": per_image_images, "templates": len(DIVERSE_TEMPLATES),
                         "guidance_scale_range": [1, 5], "single_guidance_scale": 7.5, "scheduler": "dpm++",
                         "dtype": str(single.dtype), "target": target},
            "single_template_images_per_s": round(rate["single"], 3),
            "diverse_images_per_s": round(rate["diverse"], 3),
            "per_image_calls_images_per_s": round(rate["per_image_calls"], 3),
            "ratio": round(rate["diverse"] / rate["single"], 3),  # diverse / single: 1 = prompt diversity is free
            "ratio_per_image_calls": round(rate["per_image_calls"] / rate["single"], 3)}


# -- (b)/(e) training ---------------------------------------------------------------------------
def raw_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, epochs: int, fast: bool,
              seed: int) -> None:
    """The minimal loop: data already on the device, same optimiser, layout and precision."""
    device = images.device
    model.to(device).train()
    if fast:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x = as_float(images[idx])
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
                loss = nn.functional.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if fast:
        model.to(memory_format=torch.contiguous_format)


def training(device: torch.device, *, shape: tuple[int, int, int], n: int, batch: int, epochs: int, repeats: int) -> dict:
    channels, size, _ = shape
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    spec = dict(num_classes=10, in_channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    model = seeded_model(0, **spec)
    settings = TrainSettings(epochs=epochs, batch_size=batch, lr=0.02, momentum=0.9, weight_decay=5e-4, augment=False,
                             proximal_mu=0.0, max_steps=None, fast_cuda=True)
    fast = device.type == "cuda"
    on_device = Split(images.to(device), labels.to(device)) if fast else Split(images, labels)
    if fast:
        torch.backends.cudnn.benchmark = True

    def project():
        train(model, on_device, settings, device, seed=1)

    def raw():
        raw_train(model, on_device.images.to(device), on_device.labels.to(device), batch, epochs, fast, seed=1)

    project(), raw()
    project_s, raw_s = [], []
    for _ in range(repeats):
        project_s += timed(project, device, 1)
        raw_s += timed(raw, device, 1)
    p, r = n * epochs / statistics.median(project_s), n * epochs / statistics.median(raw_s)
    evaluation = timed(lambda: evaluate(model, on_device, device, 1024, fast_cuda=True), device, 3)
    return {"settings": {"image_shape": list(shape), "images": n, "epochs": epochs, "batch": batch,
                         "precision": "bf16 autocast, channels_last" if fast else "fp32"},
            "project_images_per_s": round(p, 1), "raw_images_per_s": round(r, 1), "ratio": round(p / r, 3),
            "eval_images_per_s": round(n / statistics.median(evaluation), 1)}


# -- (c) cache ---------------------------------------------------------------------------------
def cache(generator, plan: dict, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        _, _, hit = generate_cached(generator, plan, 0, folder)
        sync(device)
        miss_s = time.perf_counter() - start
        assert not hit
        hits = []
        for _ in range(5):
            start = time.perf_counter()
            _, _, hit = generate_cached(generator, plan, 0, folder)
            hits.append(time.perf_counter() - start)
            assert hit
    hit_s = statistics.median(hits)
    return {"images": sum(plan.values()), "generate_seconds": round(miss_s, 3), "hit_seconds": round(hit_s, 4),
            "ratio": round(miss_s / hit_s, 1)}


# -- (d) simulation ----------------------------------------------------------------------------
def simulation(rounds: int, clients: int) -> dict:
    """Seconds per round (median of rounds 2..N) of FedAvg, GenFL overlapped and GenFL sequential, with
    one client worker on one core and the ServerApp on the other (federation.simulation_cpus=1)."""
    common = [f"num_rounds={rounds}", f"federation.num_clients={clients}", "federation.simulation_cpus=1",
              "server.threads=1", "checkpoint.enabled=false"]
    arms = {"fedavg": ["strategy=base_only"], "genfl_overlapped": ["strategy=genfl", "server.overlap=true"],
            "genfl_sequential": ["strategy=genfl", "server.overlap=false"]}
    out = {}
    base = Path(tempfile.mkdtemp(prefix="genfl-throughput-"))
    for name, overrides in arms.items():
        run_dir = base / name
        code = subprocess.run([sys.executable, "-m", "genfl_cli.run", *common, *overrides, f"output.dir={run_dir}",
                               f"generation.cache_dir={base / 'cache'}"], cwd=ROOT).returncode  # genfl-run
        rows = json.loads((run_dir / "metrics.json").read_text())["rounds"]
        per_round = [b["wall_seconds"] - a["wall_seconds"] for a, b in zip(rows, rows[1:])]
        out[name] = {"exit_code": code, "seconds_per_round": [round(s, 2) for s in per_round],
                     "median_seconds_per_round": round(statistics.median(per_round[1:] or per_round), 2),
                     "augmented_train_seconds": [r.get("augmented_train_seconds") for r in rows[1:]]}
    fedavg = out["fedavg"]["median_seconds_per_round"]
    out["ratio_genfl_overlapped_to_fedavg"] = round(out["genfl_overlapped"]["median_seconds_per_round"] / fedavg, 3)
    out["ratio_genfl_sequential_to_fedavg"] = round(out["genfl_sequential"]["median_seconds_per_round"] / fedavg, 3)
    out["settings"] = {"rounds": rounds, "clients": clients, "overrides": common}
    return out


def prompt_costs(args, device: torch.device, work: Path, folder: Path | None = None) -> dict:
    """(f) on the model of this run: SD v1-5's architecture at 256 px (--sd15) or the tiny one at 32 px."""
    from tiny_sd import build_sd15_random_folder, build_tiny_sd_folder

    if args.sd15:
        folder = folder or build_sd15_random_folder(work / "sd15")
        return {"prompt_cost_sd15_256px_25steps": prompt_cost(folder, device, resolution=256, steps=25, batch=32,
                                                              images=64, target=32, repeats=args.repeats,
                                                              per_image_images=16)}
    folder = folder or build_tiny_sd_folder(work / "tiny")
    return {"prompt_cost_tiny_sd_32px_10steps": prompt_cost(folder, device, resolution=32, steps=10, batch=16, images=32,
                                                            target=32, repeats=args.repeats, per_image_images=32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sd15", action="store_true", help="SD v1-5 architecture (random weights) instead of the tiny model")
    parser.add_argument("--simulation", action="store_true", help="also time GenFL vs FedAvg rounds (needs flwr)")
    parser.add_argument("--prompt-cost-only", action="store_true", help="time only (f), the cost of prompt diversity")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads() if device.type == "cuda" else 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    import diffusers

    result = {"device": name, "device_type": device.type, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(), "figures": {}}
    figures = result["figures"]
    work = Path(tempfile.mkdtemp(prefix="genfl-sd-"))
    if args.prompt_cost_only:
        figures.update(prompt_costs(args, device, work))
    elif args.sd15:
        from tiny_sd import build_sd15_random_folder

        folder = build_sd15_random_folder(work / "sd15")
        figures.update(prompt_costs(args, device, work, folder))
        for resolution in (512, 256):
            figures[f"generation_sd15_{resolution}px_25steps"] = generation(
                folder, device, resolution=resolution, steps=25, batch=32, images=64, target=32, repeats=args.repeats)
            print(json.dumps(figures[f"generation_sd15_{resolution}px_25steps"]), flush=True)
        sd = TextToImageGenerator(model=str(folder), class_names=CIFAR10_CLASS_NAMES, prompt_templates=["a photo of a {name}"],
                                  class_descriptions=None, negative_prompt=None, guidance_scale=7.5,
                                  guidance_scale_range=None, num_inference_steps=25, scheduler="dpm++",
                                  generation_resolution=256, target_size=32, target_channels=3, batch_size=32,
                                  device=str(device), local_files_only=True, safety_checker=False)
        figures["cache_sd15_256px"] = cache(sd, {0: 32, 1: 32}, device)
        figures["augmented_training_cifar"] = training(device, shape=(3, 32, 32), n=25_600, batch=512, epochs=2, repeats=args.repeats)
        figures["client_training_cifar_batch64"] = training(device, shape=(3, 32, 32), n=6_400, batch=64, epochs=1, repeats=args.repeats)
    else:
        from tiny_sd import build_tiny_sd_folder

        folder = build_tiny_sd_folder(work / "tiny")
        figures["generation_tiny_sd_32px_10steps"] = generation(folder, device, resolution=32, steps=10, batch=16, images=32,
                                                                target=32, repeats=args.repeats)
        figures.update(prompt_costs(args, device, work, folder))
        from omegaconf import OmegaConf

        from generation.class_conditional import ClassConditionalGenerator

        conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "generator" / "class_conditional.yaml"), resolve=True)
        digits = ClassConditionalGenerator.from_config({**conf, "pretrain_if_missing": False},
                                                       OmegaConf.load(ROOT / "conf" / "dataset" / "digits.yaml"))
        figures["cache_class_conditional_digits"] = cache(digits, {c: 100 for c in range(10)}, device)
        figures["augmented_training_digits"] = training(device, shape=(1, 8, 8), n=1_000, batch=16, epochs=1, repeats=args.repeats)
        figures["client_training_digits"] = training(device, shape=(1, 8, 8), n=54, batch=16, epochs=1, repeats=args.repeats)
    if args.simulation:
        figures["simulation_round_digits"] = simulation(args.rounds, args.clients)
    ratios = {k: v.get("ratio") for k, v in figures.items() if isinstance(v, dict) and "ratio" in v}
    if "simulation_round_digits" in figures:
        ratios["genfl_round_to_fedavg_round"] = figures["simulation_round_digits"]["ratio_genfl_overlapped_to_fedavg"]
    result["ratios"] = ratios
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"throughput-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
