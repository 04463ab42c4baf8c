"""Speed against image quality for the offline generator's DDIM step count.

Fewer sampling steps make generation faster and change the images, so each setting is reported with
an accuracy next to its speed: the share of samples that a classifier trained on real digits
labels as their intended class (the same check `python -m generation.pretrain` prints).

    python bench/generator_steps.py        # writes bench/results/generator_steps.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.class_conditional import ClassConditionalGenerator  # noqa: E402
from generation.pretrain import classifier_agreement, real_digit_classifier  # noqa: E402

STEPS = (50, 25, 10, 5)
PLAN = {c: 100 for c in range(10)}


def main() -> None:
    torch.set_num_threads(1)
    digits = OmegaConf.load(ROOT / "conf" / "dataset" / "digits.yaml")
    classifier, real_accuracy = real_digit_classifier(split_seed=digits.split_seed, test_fraction=digits.test_fraction,
                                                      public_fraction=digits.public_fraction)
    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "generator" / "class_conditional.yaml"), resolve=True)
    rows = []
    for steps in STEPS:
        generator = ClassConditionalGenerator.from_config({**conf, "sampling_steps": steps, "pretrain_if_missing": False}, digits)
        generator.record  # loads the weights outside the timing
        started = time.perf_counter()
        images, labels = generator.generate(PLAN, seed=0)
        seconds = time.perf_counter() - started
        agreement = classifier_agreement(classifier, images, labels, 10)["overall"]
        rows.append({"sampling_steps": steps, "images": len(labels), "seconds": round(seconds, 2),
                     "images_per_s": round(len(labels) / seconds, 1), "classifier_agreement": round(agreement, 4)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{platform.machine()}, 1 thread", "generator": f"class_conditional ({conf['corpus']})",
              "real_test_accuracy_of_the_classifier": round(real_accuracy, 4), "rows": rows}
    (ROOT / "bench" / "results" / "generator_steps.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
