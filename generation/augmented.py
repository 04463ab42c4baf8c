"""The server's augmented model: a copy of the current global model trained on the synthetic set.

Plain PyTorch behind a NumPy-state interface, so the strategy can call it without importing torch
or diffusers. Synthetic images are produced once (plan -> generator -> cache) before round 1; the
strategy may call `train` from a background thread while the clients train.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from generation.base import ImageGenerator
from generation.cache import cache_key, generate_cached
from generation.planning import plan_generation, requested_images
from torchcore.data import Split
from torchcore.train import TrainSettings, evaluate, load_numpy_state, state_to_numpy, train


class AugmentedModelTrainer:
    """``prepare(histogram)`` synthesises the data; ``train(state, round)`` trains the augmented model.

    ``make_generator`` is called only if images are actually needed (so FedAvg never loads a model).
    ``overlap``: `start` trains in a background thread, beside the clients; otherwise when the
    strategy asks for the result (after the clients replied). Same seeds, same model either way.
    """

    def __init__(
        self,
        *,
        make_generator: Callable[[], ImageGenerator],
        model: torch.nn.Module,
        settings: TrainSettings,
        device: torch.device,
        test: Split,
        eval_batch_size: int,
        policy: str,
        budget: int | None,
        per_class: int | None,
        target: int | None,
        seed: int,
        cache_dir: str | None,
        overlap: bool,
    ):
        self.make_generator = make_generator
        self.model = model
        self.settings = settings
        self.device = device
        self.test = test
        self.eval_batch_size = eval_batch_size
        self.plan_settings = dict(policy=policy, budget=budget, per_class=per_class, target=target)
        self.seed = seed
        self.cache_dir = cache_dir
        self.synthetic: Split | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augmented-model") if overlap else None

    def prepare(self, global_histogram: Sequence[int], plan: dict[int, int] | None = None) -> dict:
        """Plan and generate (or load from cache) the synthetic set; returns what happened.

        ``plan`` given (a resumed run) skips planning, so the run continues on the very same images.
        ``images_requested`` > ``sum(plan)`` means ``generation.budget`` scaled the plan down.
        """
        requested = sum(requested_images(global_histogram, **self.plan_settings))
        if plan is None:
            plan = plan_generation(global_histogram, **self.plan_settings)
        started = time.perf_counter()
        generator = self.make_generator()
        images, labels, hit = generate_cached(generator, plan, self.seed, self.cache_dir)
        # Kept on the training device (uint8: 3 KB per 32x32 RGB image), not copied batch by batch.
        on_gpu = self.device.type == "cuda"
        self.synthetic = Split(images.to(self.device), labels.to(self.device)) if on_gpu else Split(images, labels)
        return {
            "plan": plan,
            "images_requested": requested,
            "images_synthesized": 0 if hit else len(labels),
            "images_available": len(labels),
            "cache_hit": hit,
            "cache_key": cache_key(generator, plan, self.seed),
            "generation_seconds": round(time.perf_counter() - started, 2),
        }

    def start(self, global_state: dict[str, np.ndarray], server_round: int) -> Future:
        """This round's augmented-model training, as a future of `train`'s result."""
        if self._pool is not None:
            return self._pool.submit(self.train, global_state, server_round)
        return _Deferred(lambda: self.train(global_state, server_round))

    def close(self) -> None:
        """Wait for training still running and stop the thread (a failed run must not leave it behind)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def train(self, global_state: dict[str, np.ndarray], server_round: int) -> tuple[dict[str, np.ndarray], dict]:
        """w_aug: the global model after ``settings.epochs`` on the synthetic set, plus its test metrics."""
        if self.synthetic is None or len(self.synthetic) < 2:
            raise RuntimeError("the augmented model has no synthetic data: prepare() produced fewer than 2 images")
        load_numpy_state(self.model, global_state)
        started = time.perf_counter()
        loss = train(self.model, self.synthetic, self.settings, self.device, seed=self.seed * 7_919 + server_round)
        seconds = time.perf_counter() - started
        test_loss, test_accuracy = evaluate(self.model, self.test, self.device, self.eval_batch_size, self.settings.fast_cuda)
        metrics = {
            "augmented_train_loss": loss,
            "augmented_test_accuracy": test_accuracy,
            "augmented_train_seconds": round(seconds, 2),
            "images_used": len(self.synthetic) * self.settings.epochs,
        }
        return state_to_numpy(self.model), metrics


class _Deferred(Future):
    """A future that runs its work when its result is first asked for (the sequential path)."""

    def __init__(self, work: Callable):
        super().__init__()
        self._work = work

    def result(self, timeout=None):
        if not self.done():
            try:
                self.set_result(self._work())
            except BaseException as err:  # kept, and raised to every caller, like a pool's future
                self.set_exception(err)
        return super().result(timeout)
