"""One round's row of metrics.json: every column, what it means, who fills it. The strategy fills
the training/evaluation/mix columns, the augmenter its own, the ServerApp the test and time columns."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RoundStats:
    round: int
    # central evaluation of the new global model on the held-out test split (ServerApp)
    test_accuracy: float | None = None
    test_loss: float | None = None
    # the client part of Eq. (1)
    train_loss: float | None = None  # the base strategy's average of the clients' training losses
    clients_trained: int | None = None  # replies aggregated
    clients_failed: int | None = None  # error replies
    clients_excluded: int | None = None  # replies rejected by validation (the log says why)
    clients_missing: int | None = None  # sampled nodes that did not reply within the round timeout
    late_histograms: int | None = None  # sampled nodes that reported their label histogram only this round
    # the mix, Eq. (1)
    kappa_fl: float | None = None
    kappa_aug: float | None = None
    update_ratio: float | None = None  # ||w(t+1) - w(t)|| / ||w(t)||; None when not finite
    round_accepted: bool | None = None  # False: the new model was rejected and w(t) kept
    round_failure: str | None = None  # why it was rejected
    # adaptive kappa (strategy.kappa_policy=adaptive): the clients' evidence, scored in this round's evaluation
    kappa_probe: dict | None = None  # candidate kappa_aug -> federated loss of that mix on the clients' real data
    kappa_probe_error: dict | None = None  # candidate -> standard error of its loss difference to kappa 0 across nodes
    kappa_best: float | None = None  # the chosen candidate: lowest loss among those that beat kappa 0 by mix.evidence_z errors
    kappa_next: float | None = None  # kappa_aug for the next round (moved toward kappa_best, bounded)
    synthetic_retired: bool | None = None  # mix.retire_below: True in the round whose evidence retired the synthetic data
    probe_nodes: int | None = None  # nodes whose scores were used
    # BatchNorm running statistics re-estimated on the clients (model.bn_stats=reestimate)
    bn_nodes: int | None = None  # nodes whose statistics were combined
    # the augmented model (generation/augmented.py)
    augmented_train_loss: float | None = None
    augmented_test_accuracy: float | None = None
    augmented_train_seconds: float | None = None
    images_used: int | None = None  # synthetic images the augmented model trained on this round
    augmented_steps: int | None = None  # augmented.steps_follow_kappa: this round's step cap
    augmented_class_weights: list | None = None  # round-aware augmentation: sampling weight per class this round
    synthetic_scored: int | None = None  # filtering: images scored this round (or at generation)
    synthetic_kept: int | None = None
    synthetic_dropped: int | None = None
    synthetic_filter: dict | None = None  # class -> [scored, kept, dropped]
    # round 1 only: the synthetic set
    images_synthesized: int | None = None  # made by the generator in this run (0: a cache hit)
    generation_seconds: float | None = None
    # federated evaluation on the clients' own data (federation.fraction_evaluate > 0)
    clients_evaluated: int | None = None
    clients_evaluate_failed: int | None = None
    clients_evaluate_excluded: int | None = None
    federated_eval_loss: float | None = None
    federated_eval_acc: float | None = None
    # time (ServerApp)
    round_seconds: float | None = None  # this round, training to central evaluation
    wall_seconds: float | None = None  # since the run started (a resumed run continues the count)

    def update(self, **values) -> None:
        for key, value in values.items():
            if key not in COLUMNS:
                raise KeyError(f"{key!r} is not a metrics.json column (strategy/stats.py)")
            setattr(self, key, value)

    def row(self) -> dict:
        """The metrics.json row: the columns that were filled, in this order."""
        return {name: getattr(self, name) for name in COLUMNS if getattr(self, name) is not None}


COLUMNS = tuple(f.name for f in fields(RoundStats))
