"""The server's augmented model: a copy of the current global model trained on the synthetic set.

Plain PyTorch behind a NumPy-state interface, so the strategy can call it without importing torch
or diffusers. Synthetic images are produced once (plan -> generator -> cache) before round 1; the
strategy may call `train` from a background thread while the clients train.

Two optional refinements (issue 16), both off in the configured settings (then training is bit for bit
as before; the filter is part of generator_check.on_fail's cautious ones, see `configure`):
``filter`` (`generation.filtering`) leaves out the synthetic images the current global model (or CLIP,
zero-shot) is least sure belong to their class; ``class_weights`` (round-aware augmentation) re-weights
the class mix the augmented model samples in one round, e.g. toward what that round's clients lack.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from generation import progress
from generation.base import ImageGenerator
from generation.cache import cache_key, generate_cached
from generation.filtering import FilterSettings, per_class, score_confidence, select
from generation.planning import plan_generation, requested_images
from genfl_torch.data import Split
from genfl_torch.train import TrainSettings, batch_bounds, evaluate, load_numpy_state, state_to_numpy, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The latest filtering decision over ``trainer.synthetic`` (CPU tensors, in the set's order)."""

    round: int  # the round whose global model scored the images
    confidence: torch.Tensor  # float32 (N,): that model's (or CLIP's) softmax probability of each image's own class
    kept: torch.Tensor  # bool (N,): the images the augmented model trains on until the next rescoring


class AugmentedModelTrainer:
    """``prepare(histogram)`` synthesises the data; ``train(state, round)`` trains the augmented model.

    ``make_generator`` is called only if images are actually needed (so FedAvg never loads a model).
    ``overlap``: `start` trains in a background thread, beside the clients; otherwise when the
    strategy asks for the result (after the clients replied). Same seeds, same model either way.
    ``filter``: filtering of the synthetic set (None or mode "none": every image is used); mode "clip"
    prompts CLIP with ``class_names`` (in label order) and scores the set once, on ``device``.
    Rounds are trained one at a time (one worker thread, or the caller's); the filter's selection is
    replaced, never changed in place, so `selection`/`kept_mask` can be read from another thread.
    `state_dict` / `load_state_dict`: the selection travels with a run's checkpoint, so a resumed run
    reuses it in the rounds between rescorings exactly as the uninterrupted run does.
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
        filter: FilterSettings | None = None,
        class_names: Sequence[str] | None = None,
        steps_follow_trust: bool = False,
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
        self._cache_key: str | None = None  # the synthetic set's (a restored selection must be of the same one)
        self._restored: dict | None = None  # a checkpoint's selection, until it is adopted or a round trains
        self.num_classes = _num_classes(model)
        self.class_names = None if class_names is None else tuple(class_names)
        self.configure(max_steps=settings.max_steps, filter=filter, steps_follow_trust=steps_follow_trust)
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
        self._selection = None  # scores belong to one synthetic set
        self._cache_key = cache_key(generator, plan, self.seed)
        self._adopt_restored()
        return {
            "plan": plan,
            "images_requested": requested,
            "images_synthesized": 0 if hit else len(labels),
            "images_available": len(labels),
            "cache_hit": hit,
            "cache_key": self._cache_key,
            "generation_seconds": round(time.perf_counter() - started, 2),
        }

    @property
    def selection(self) -> Selection | None:
        """The latest filtering decision (None until a round filtered)."""
        return self._selection

    @property
    def kept_mask(self) -> torch.Tensor | None:
        """bool (N,) over ``synthetic``: the images the latest filtered round trained on (None: no filtering yet)."""
        selection = self._selection
        return None if selection is None else selection.kept

    def start(self, global_state: dict[str, np.ndarray], server_round: int,
              class_weights: Sequence[float] | None = None, trust: float | None = None) -> Future:
        """This round's augmented-model training, as a future of `train`'s result.

        When its result holds the round up (trained only then, or still training beside the clients),
        the wait is logged (`progress.phase`). Bad ``class_weights`` raise ValueError here, in the caller's thread."""
        class_weights = self._checked_weights(class_weights)
        name = f"augmented model, round {server_round}"
        if self._pool is not None:
            job = self._pool.submit(self.train, global_state, server_round, class_weights, trust)

            def join():  # the round waits only if the training beside the clients has not finished yet
                if job.done():
                    return job.result()
                with progress.phase(name, "the clients are done; waiting for its training on the synthetic set"):
                    return job.result()
            return _Deferred(join)

        def run():
            with progress.phase(name, "training on the synthetic set after the clients (server.overlap=false)"):
                return self.train(global_state, server_round, class_weights, trust)
        return _Deferred(run)

    def close(self) -> None:
        """Wait for training still running and stop the thread (a failed run must not leave it behind)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def train(self, global_state: dict[str, np.ndarray], server_round: int,
              class_weights: Sequence[float] | None = None, trust: float | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """w_aug: the global model after ``settings.epochs`` on the synthetic set, plus its test metrics.

        With a filter, the images are first scored by the global model as given (before training) on
        the rounds `FilterSettings.rescores` names, and the augmented model trains on the kept ones.
        ``class_weights`` (one non-negative weight per class, positive sum): each epoch draws as many
        samples as the (kept) set holds, image i with probability proportional to
        ``class_weights[label_i] / count[label_i]``, so class c makes up a share ``class_weights[c]``
        (normalised over the classes the set holds) of what is trained on; seeded like the shuffle.
        ``trust`` in [0, 1] (with ``steps_follow_trust``): the step cap moves that share of the way from
        ``settings.max_steps`` to every batch of every epoch, so the augmented model goes only as far
        from w(t) as the clients' evidence trusts the synthetic data (strategy: kappa_aug / its start).
        """
        if self.synthetic is None or len(self.synthetic) < 2:
            raise RuntimeError("the augmented model has no synthetic data: prepare() produced fewer than 2 images")
        class_weights = self._checked_weights(class_weights)
        load_numpy_state(self.model, global_state)
        started = time.perf_counter()
        data, metrics = self.synthetic, {}
        restored, self._restored = self._restored, None  # from this round on the run's own selections count
        if restored is not None and self.filter is not None and self._selection is None:
            logger.warning("the checkpoint's filter selection (round %s) does not fit this run's synthetic set or "
                           "filter: round %d scores the images afresh", restored["round"], server_round)
        if self.filter is not None:
            data, metrics = self._filtered(server_round)
        sample_weights = None
        if class_weights is not None:
            sample_weights, effective = _sample_weights(data.labels, class_weights)
            metrics["augmented_class_weights"] = [round(w, 4) for w in effective]
        seed = self.seed * 7_919 + server_round
        settings = self._settings(len(data), trust)
        if settings is not self.settings:
            metrics["augmented_steps"] = settings.max_steps
        if sample_weights is None:  # exactly the call (and numbers) of a run without the option
            loss = train(self.model, data, settings, self.device, seed=seed)
        else:
            loss = train(self.model, data, settings, self.device, seed=seed, sample_weights=sample_weights)
        seconds = time.perf_counter() - started
        test_loss, test_accuracy = evaluate(self.model, self.test, self.device, self.eval_batch_size, self.settings.fast_cuda)
        metrics = {
            "augmented_train_loss": loss,
            "augmented_test_accuracy": test_accuracy,
            "augmented_train_seconds": round(seconds, 2),
            "images_used": images_trained(len(data), settings),
            **metrics,
        }
        return state_to_numpy(self.model), metrics

    def reference(self, initial_state: dict[str, np.ndarray], epochs: int) -> tuple[dict[str, np.ndarray], float]:
        """The generator check's model: ``initial_state`` trained ``epochs`` on the whole synthetic set
        alone (every batch, no filter), and its accuracy on that set. The nodes then score it on their
        real data; the ratio says how far a model of this generator's images carries to the federation's
        (strategy/generator_check.py). Its own seed: the rounds' training is not touched."""
        if self.synthetic is None or len(self.synthetic) < 2:
            raise RuntimeError("the generator check has no synthetic data: prepare() produced fewer than 2 images")
        load_numpy_state(self.model, initial_state)
        settings = replace(self.settings, epochs=epochs, max_steps=None, freeze_bn=False)
        train(self.model, self.synthetic, settings, self.device, seed=self.seed * 7_919 - 1)  # rounds use + round
        _, accuracy = evaluate(self.model, self.synthetic, self.device, self.eval_batch_size, self.settings.fast_cuda)
        return state_to_numpy(self.model), accuracy

    def configure(self, *, max_steps: int | None, filter: FilterSettings | None, steps_follow_trust: bool) -> None:
        """How far and on which images the augmented model trains from the next round on (the generator
        check switches a trusted generator to the run's own settings); a new filter selects afresh."""
        filter = filter if filter is not None and filter.active else None
        if filter is not None and filter.mode == "clip" and not self.class_names:
            raise ValueError("augmented.filter.mode=clip needs the class names (class_names) to prompt CLIP with")
        self.settings = replace(self.settings, max_steps=max_steps)
        self.filter, self.steps_follow_trust, self._selection = filter, steps_follow_trust, None
        self._adopt_restored()

    def state_dict(self) -> dict:
        """What a resumed run needs from the trainer (plain data, for the checkpoint): the filter's latest
        selection, with the filter and the synthetic set it belongs to. With ``refresh_every > 1`` (or
        CLIP, which scores once) the rounds between rescorings reuse it; rescored afresh after a resume,
        it would come from another round's global model and the resumed run would differ."""
        selection = self._selection
        if selection is None or self.filter is None:
            return {"selection": None}
        return {"selection": {"round": selection.round, "confidence": selection.confidence.numpy().copy(),
                              "kept": selection.kept.numpy().copy(), "filter": asdict(self.filter),
                              "cache_key": self._cache_key}}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore `state_dict`'s selection (a checkpoint without one, or ``None``: nothing to restore).
        It is adopted once the same synthetic set is prepared and the same filter configured (the
        generator check may switch filters before round 1); a set or filter that differs rescores."""
        self._restored = (state or {}).get("selection")
        self._adopt_restored()

    def _adopt_restored(self) -> None:
        saved = self._restored
        if saved is None or self._selection is not None or self.synthetic is None or self.filter is None:
            return
        if (saved["filter"] == asdict(self.filter) and saved["cache_key"] == self._cache_key
                and len(saved["kept"]) == len(self.synthetic)):
            self._selection = Selection(int(saved["round"]), torch.from_numpy(np.asarray(saved["confidence"]).copy()),
                                        torch.from_numpy(np.asarray(saved["kept"], dtype=bool).copy()))

    def _settings(self, images: int, trust: float | None) -> TrainSettings:
        """This round's training settings: the step cap scaled by ``trust`` when steps follow it."""
        cap = self.settings.max_steps
        if not self.steps_follow_trust or trust is None or cap is None:
            return self.settings
        if not 0.0 <= trust <= 1.0:
            raise ValueError(f"trust must be in [0, 1] (got {trust})")
        full = self.settings.epochs * len(batch_bounds(images, self.settings.batch_size))  # every batch
        return replace(self.settings, max_steps=max(1, round(cap + trust * max(full - cap, 0))))

    def _filtered(self, server_round: int) -> tuple[Split, dict]:
        """This round's training set and the filter's metrics (the model holds the global state)."""
        labels = self.synthetic.labels
        scored = False
        if not self.filter.filters(server_round):
            kept = torch.ones(len(labels), dtype=torch.bool)
        else:
            selection = self._selection
            if selection is None or self.filter.rescores(server_round):
                confidence = self._scores()
                classes = len(self.class_names) if self.filter.mode == "clip" else self.num_classes
                kept = select(confidence, labels, keep_ratio=self.filter.keep_ratio,
                              threshold=self.filter.threshold_for(classes))
                selection = Selection(server_round, confidence, kept)
                self._selection = selection  # one assignment: readers see the old or the new decision
                scored = True
            kept = selection.kept
        report = per_class(labels, kept, scored)
        metrics = {
            "synthetic_scored": len(labels) if scored else 0,
            "synthetic_kept": int(kept.sum()),
            "synthetic_dropped": int((~kept).sum()),
            "synthetic_filter": report,
        }
        if bool(kept.all()):
            return self.synthetic, metrics  # the very same set: no copy, same numbers as unfiltered
        index = kept.nonzero().squeeze(1).to(labels.device)
        return Split(self.synthetic.images[index], labels[index]), metrics

    def _scores(self) -> torch.Tensor:
        """The filter's score of every synthetic image (float32 (N,), CPU); the model holds the global state."""
        if self.filter.mode == "clip":
            from generation.clip_filter import score_clip  # transformers: only when CLIP is asked for

            f = self.filter
            return score_clip(self.synthetic, self.class_names, model=f.clip_model, prompt=f.clip_prompt,
                              device=self.device, batch_size=f.clip_batch_size)
        return score_confidence(self.model, self.synthetic, self.device, self.eval_batch_size)

    def _checked_weights(self, class_weights: Sequence[float] | None) -> list[float] | None:
        """``class_weights`` as floats, or ValueError (one line) when they are not a usable weighting."""
        if class_weights is None:
            return None
        try:
            weights = [float(w) for w in class_weights]
        except (TypeError, ValueError):
            raise ValueError(f"class_weights: need a sequence of numbers, got {class_weights!r}") from None
        if self.num_classes is not None and len(weights) != self.num_classes:
            raise ValueError(f"class_weights: need {self.num_classes} weights (one per class), got {len(weights)}")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"class_weights: need finite weights >= 0 with a positive sum, got {weights}")
        return weights


def images_trained(n: int, settings: TrainSettings) -> int:
    """How many images `genfl_torch.train.train` passes through the model for a set of ``n``: its batches
    (`batch_bounds`) over every epoch, stopped after ``settings.max_steps`` of them. The count metrics.json
    reports as ``images_used``: with a step cap, not the whole set times the epochs."""
    sizes = [end - start for start, end in batch_bounds(n, settings.batch_size)] * settings.epochs
    return sum(sizes if settings.max_steps is None else sizes[: settings.max_steps])


def _num_classes(model: torch.nn.Module) -> int | None:
    """The classifier's output size (the last Linear layer), or None when the model has none."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linear[-1].out_features if linear else None


def _sample_weights(labels: torch.Tensor, class_weights: list[float]) -> tuple[torch.Tensor, list[float]]:
    """Per-image sampling weights (float64, CPU) that give class c the share ``class_weights[c]``, and
    the class shares actually used: weights of classes the set does not hold are dropped and the rest
    renormalised. If no weight falls on a class the set holds, the set's own mix is used (a warning)."""
    labels = labels.detach().cpu()
    size = max(len(class_weights), int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=size).double()
    weights = torch.zeros(size, dtype=torch.float64)
    weights[: len(class_weights)] = torch.tensor(class_weights, dtype=torch.float64)
    weights[counts == 0] = 0.0
    if not weights.sum() > 0:
        logger.warning("class_weights %s put no weight on the classes of the synthetic set %s; using its own mix",
                       class_weights, counts.nonzero().squeeze(1).tolist())
        weights = counts.clone()
    weights /= weights.sum()
    per_image = weights[labels] / counts[labels]
    return per_image, weights[: len(class_weights)].tolist()


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
