"""How good the synthetic images of a run were: scores for metrics.json and a picture to look at first.

`synthetic_quality` answers two questions about the synthetic set, with the run's final global model
(trained on the clients' real data) as the judge:

* **Label agreement**: the share of synthetic images whose label the global model predicts, overall
  and per class, beside the mean probability it gives the synthetic label ("confidence") and, for
  reference, its accuracy on the real test images (``real_accuracy``). Agreement far below that real
  accuracy means images that do not look like their class (to a model that learnt the class from real data).
  A class whose agreement is below ``DISAGREEMENT_SHARE`` (half) of the model's accuracy on that class's
  real images (``real_accuracy_per_class``) is listed in ``disagreeing_classes``, with what the model
  calls its synthetic images (``predicted_per_class``): the generator's label for it does not match the
  federation's (swapped classes, a wrong prompt or class order); `disagreement_warning` says so in words.
* **Real-vs-synthetic separability** (the paper's domain-shift analysis): how well a linear probe (ridge
  regression on +-1 targets over standardised features, i.e. a regularised Fisher discriminant: one
  linear solve per fold, so seconds even on a CPU) tells real test images from synthetic ones, measured
  out of fold (5 folds, balanced: as many real as synthetic images). Reported as AUC and accuracy:
  0.5 = indistinguishable, 1.0 = fully separable. Two feature sets:

  - ``separability_*``: the global model's penultimate features (the input of its last linear layer,
    512 numbers for ResNet-18): the shift as the classifier sees it, the one that matters for training;
  - ``pixel_separability_*``: model-free image statistics: every channel average-pooled to 8x8, plus per
    channel the mean, the standard deviation and the mean absolute horizontal and vertical pixel
    difference (sharpness / noise). Catches colour, contrast and blur shifts a model may ignore.

Cost is bounded by ``max_images`` (default 1,000): at most that many kept synthetic images, dropped
ones (with a filter's ``kept_mask``) and real ones go through the model, each a seeded random subset;
separability uses min(synthetic scored, real scored) images per side. Deterministic for a seed.
``images`` in the result says how many of each were scored.

`save_sample_grid` writes ``synthetic_samples.png``: one row per class (the first ``max_classes``
classes that have images), the first ``per_class`` images of each in generation order, the images a
filter dropped framed in red, and per row the class name with its image count (kept/total).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from genfl_torch.data import Split, as_float

METRICS_KEY = "synthetic_quality"  # the scores' key in metrics.json
MAX_IMAGES = 1_000
FOLDS = 5
L2 = 1e-2  # the probe's ridge penalty per training sample (features standardised)
POOLED = 8  # pixel features: each channel average-pooled to POOLED x POOLED
# A class's synthetic images disagree with the federation when the final model gives them their label
# less than this share as often as it gets the class's real images right (0.41 vs 0.95 is flagged; a merely
# weaker generator, 0.7 vs 0.95, is not), judged on at least DISAGREEMENT_MIN_IMAGES scored images.
DISAGREEMENT_SHARE = 0.5
DISAGREEMENT_MIN_IMAGES = 5

# The grid's geometry (fixed, so its pixel size is known: see `grid_size`).
CELL_INCHES = 0.8
LABEL_INCHES = 1.4
TITLE_INCHES = 0.5
DPI = 100
DROPPED_COLOUR = (0.9, 0.0, 0.0)


# -- scores ------------------------------------------------------------------------------------------

def synthetic_quality(
    model: nn.Module,
    synthetic: Split,
    real: Split,
    device: torch.device,
    *,
    seed: int,
    num_classes: int,
    kept_mask: torch.Tensor | Sequence[bool] | None = None,
    max_images: int = MAX_IMAGES,
    batch_size: int = 256,
) -> dict:
    """Label agreement and real-vs-synthetic separability of ``synthetic`` (see the module docstring).

    ``model``: the final global model (its mode and weights are left as found). ``real``: held-out real
    images (the server's test split). ``kept_mask`` (N,) bool: which synthetic images a filter kept; the
    scores are of the kept ones, with ``agreement_dropped`` for the others and ``agreement_all`` over every
    image. JSON-ready: floats, ints,
    lists (per class, index = label, None for a class without images) and None where not computable.
    """
    n_total = len(synthetic)
    kept = _mask(kept_mask, n_total)
    generator = torch.Generator().manual_seed(seed)
    kept_idx = _subsample(torch.nonzero(kept).flatten(), max_images, generator)
    dropped_idx = _subsample(torch.nonzero(~kept).flatten(), max_images, generator)
    result: dict = {
        "images": {"synthetic": n_total, "kept": int(kept.sum()), "scored": len(kept_idx),
                   "dropped_scored": len(dropped_idx), "real_scored": 0},
        "agreement": None, "agreement_per_class": [None] * num_classes,
        "confidence": None, "confidence_per_class": [None] * num_classes,
        "agreement_dropped": None, "agreement_all": None, "real_accuracy": None,
        "real_accuracy_per_class": [None] * num_classes, "predicted_per_class": [None] * num_classes,
        "disagreeing_classes": [],
        "separability_auc": None, "separability_accuracy": None,
        "pixel_separability_auc": None, "pixel_separability_accuracy": None,
    }
    channels = real.images.shape[1] if len(real) else synthetic.images.shape[1]
    if len(dropped_idx):
        dropped_logits, _ = _forward(model, _match_channels(_take(synthetic.images, dropped_idx), channels), device,
                                     batch_size)
        dropped_labels = _take(synthetic.labels, dropped_idx).cpu().long()
        result["agreement_dropped"] = (dropped_logits.argmax(1) == dropped_labels).double().mean().item()
    if len(kept_idx) == 0:
        return result
    syn_images = _match_channels(_take(synthetic.images, kept_idx), channels)
    syn_labels = _take(synthetic.labels, kept_idx).cpu().long()

    real_idx = _subsample(torch.arange(len(real)), max_images, generator)
    real_images = _take(real.images, real_idx)
    real_labels = _take(real.labels, real_idx).cpu().long()

    syn_logits, syn_features = _forward(model, syn_images, device, batch_size)
    probs = syn_logits.softmax(1)
    hit = (probs.argmax(1) == syn_labels).double()
    confidence = probs.gather(1, syn_labels[:, None]).flatten().double()
    result["agreement"] = hit.mean().item()
    result["confidence"] = confidence.mean().item()
    # Over the whole set, kept and dropped weighed by their true counts: a filter's kept images were chosen
    # by a model, so their agreement alone flatters the generator.
    n_kept = int(kept.sum())
    result["agreement_all"] = (result["agreement"] * n_kept + (result["agreement_dropped"] or 0.0) * (n_total - n_kept)) / n_total
    predicted = probs.argmax(1)
    for c in range(num_classes):
        of_class = syn_labels == c
        if of_class.any():
            result["agreement_per_class"][c] = hit[of_class].mean().item()
            result["confidence_per_class"][c] = confidence[of_class].mean().item()
            result["predicted_per_class"][c] = int(torch.bincount(predicted[of_class], minlength=num_classes).argmax())
    if len(real_idx) == 0:
        return result
    real_logits, real_features = _forward(model, real_images, device, batch_size)
    real_hit = (real_logits.argmax(1) == real_labels).double()
    result["real_accuracy"] = real_hit.mean().item()
    for c in range(num_classes):
        if (real_labels == c).any():
            result["real_accuracy_per_class"][c] = real_hit[real_labels == c].mean().item()
    counts = torch.bincount(syn_labels, minlength=num_classes).tolist()
    result["disagreeing_classes"] = _disagreeing(result, counts)
    result["images"]["real_scored"] = len(real_idx)
    if real_features is not None:
        auc, accuracy = separability(real_features, syn_features, seed=seed)
        result["separability_auc"], result["separability_accuracy"] = auc, accuracy
    auc, accuracy = separability(pixel_features(real_images), pixel_features(syn_images), seed=seed)
    result["pixel_separability_auc"], result["pixel_separability_accuracy"] = auc, accuracy
    return result


def _disagreeing(result: dict, counts: Sequence[int]) -> list[int]:
    """The classes whose synthetic agreement is below DISAGREEMENT_SHARE of the model's real accuracy on
    them (the overall real accuracy for a class without real images in the sample)."""
    found = []
    for c, agreement in enumerate(result["agreement_per_class"]):
        real = result["real_accuracy_per_class"][c]
        real = result["real_accuracy"] if real is None else real
        if agreement is not None and real and counts[c] >= DISAGREEMENT_MIN_IMAGES \
                and agreement < DISAGREEMENT_SHARE * real:
            found.append(c)
    return found


def disagreement_warning(scores: dict, class_names: Sequence[str] | None = None) -> str | None:
    """One line naming the classes in ``scores["disagreeing_classes"]`` (`synthetic_quality`'s result),
    with their agreement, the model's real accuracy on them and what it calls their images; None if none."""
    classes = scores.get("disagreeing_classes") or []
    if not classes:
        return None

    def name(c: int | None) -> str:
        if c is None:
            return "?"
        return f"{c} ({class_names[c]})" if class_names is not None and c < len(class_names) else str(c)

    def rate(value) -> str:
        return "?" if value is None else f"{value:.2f}"

    real = scores.get("real_accuracy_per_class") or [None] * (max(classes) + 1)
    predicted = scores.get("predicted_per_class") or [None] * (max(classes) + 1)
    parts = [f"class {name(c)}: agreement {rate(scores['agreement_per_class'][c])} vs {rate(real[c])} on real "
             f"images, mostly taken for {name(predicted[c])}" for c in classes]
    return (f"synthetic data: the generator's labels disagree with the federation for {len(classes)} class(es): "
            f"{'; '.join(parts)}. Those images teach the augmented model the wrong class: check the generator's "
            f"class order or prompts (generator.class_names), or filter them (augmented.filter.mode=confidence)")


def _mask(kept_mask, n: int) -> torch.Tensor:
    if kept_mask is None:
        return torch.ones(n, dtype=torch.bool)
    mask = torch.as_tensor(kept_mask).flatten().bool().cpu()
    if len(mask) != n:
        raise ValueError(f"kept_mask has {len(mask)} entries for {n} synthetic images")
    return mask


def _subsample(indices: torch.Tensor, cap: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``cap`` of ``indices``, a seeded random subset kept in their original order."""
    if len(indices) <= cap:
        return indices
    return indices[torch.randperm(len(indices), generator=generator)[:cap].sort().values]


def _take(tensor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return tensor[idx.to(tensor.device)]


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by the channel mean (a generator's output for another data set)."""
    if images.shape[1] == channels:
        return images
    x = as_float(images)
    if channels == 1:
        return x.mean(1, keepdim=True)
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel ones")


def _last_linear(model: nn.Module) -> nn.Linear | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def _forward(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int):
    """(logits, penultimate features or None), both float32 on the CPU; the model's mode is restored."""
    head = _last_linear(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu())) \
        if head is not None else None
    was_training = model.training
    model.to(device).eval()
    logits = []
    try:
        for start in range(0, len(images), batch_size):
            x = as_float(images[start : start + batch_size]).to(device)
            logits.append(model(x).float().cpu())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    features = torch.cat(captured).flatten(1) if captured else None
    return torch.cat(logits), features


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Model-free features per image: each channel pooled to 8x8, then per channel mean, std, and mean
    absolute horizontal / vertical difference of neighbouring pixels."""
    x = as_float(images).cpu()
    pooled = nn.functional.adaptive_avg_pool2d(x, (POOLED, POOLED)).flatten(1)
    stats = [x.mean((2, 3)), x.std((2, 3)) if x.shape[2] * x.shape[3] > 1 else torch.zeros(x.shape[:2])]
    stats += [(x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((2, 3)) if x.shape[3] > 1 else torch.zeros(x.shape[:2]),
              (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean((2, 3)) if x.shape[2] > 1 else torch.zeros(x.shape[:2])]
    return torch.cat([pooled, *stats], 1)


def separability(real: torch.Tensor, synthetic: torch.Tensor, *, seed: int, folds: int = FOLDS,
                 l2: float = L2) -> tuple[float | None, float | None]:
    """(AUC, accuracy) of a ridge probe telling ``real`` feature rows from ``synthetic`` ones, out of fold.

    Both sides are cut to the smaller one's size (seeded), so 0.5 is chance for both numbers. Each
    fold's model is fitted on the other folds (features standardised with their statistics) and scores
    its own fold; AUC and accuracy are over the pooled out-of-fold scores. (None, None) with fewer than
    two images per side per fold.
    """
    n = min(len(real), len(synthetic))
    if n < 2 * folds:
        return None, None
    generator = torch.Generator().manual_seed(seed + 1)
    real = real[torch.randperm(len(real), generator=generator)[:n]].double()
    synthetic = synthetic[torch.randperm(len(synthetic), generator=generator)[:n]].double()
    x = torch.cat([real, synthetic])
    y = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    # Balanced folds: each side's images spread evenly over the folds, in a seeded order.
    fold = torch.cat([torch.randperm(n, generator=generator) % folds, torch.randperm(n, generator=generator) % folds])
    scores = torch.empty(2 * n, dtype=torch.float64)
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        w, b = _fit_ridge((x[train] - mean) / std, y[train], l2)
        scores[test] = ((x[test] - mean) / std) @ w + b
    return auc_score(scores, y), ((scores > 0).double() == y).double().mean().item()


def _fit_ridge(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares on +-1 targets with penalty ``l2 * n * |w|^2`` (a regularised Fisher discriminant):
    one linear solve, float64, deterministic."""
    target = 2 * y - 1
    mean_x, mean_t = x.mean(0), target.mean()
    xc = x - mean_x
    gram = xc.T @ xc + l2 * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ (target - mean_t))
    return w, mean_t - mean_x @ w


def auc_score(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties: 1/2)."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Tied scores share their average rank.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    ranks[order] = average[inverse]
    return ((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg)).item()


# -- the picture -------------------------------------------------------------------------------------

def grid_size(rows: int, per_class: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid with ``rows`` class rows (at least one) and ``per_class`` columns."""
    width, height = _figure_inches(rows, per_class)
    return round(width * DPI), round(height * DPI)


def _figure_inches(rows: int, per_class: int) -> tuple[float, float]:
    return LABEL_INCHES + per_class * CELL_INCHES, TITLE_INCHES + max(rows, 1) * CELL_INCHES


def save_sample_grid(
    path: str | Path,
    synthetic: Split,
    num_classes: int,
    *,
    per_class: int = 8,
    max_classes: int = 20,
    kept_mask: torch.Tensor | Sequence[bool] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of synthetic images: a row per class, dropped images framed in red; returns ``path``.

    Rows: the first ``max_classes`` labels (in label order) that have images; a title line says how many
    classes were left out. Columns: the first ``per_class`` images of the class, in generation order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    kept = _mask(kept_mask, len(synthetic))
    labels = synthetic.labels.cpu().long()
    present = [c for c in range(num_classes) if bool((labels == c).any())]
    shown = present[:max_classes]
    width, height = _figure_inches(len(shown), per_class)
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    heading = title or f"synthetic images: {len(synthetic)} in {len(present)} class(es)"
    if len(present) > len(shown):
        heading += f", first {len(shown)} shown"
    if kept_mask is not None:
        heading += f"; {int((~kept).sum())} dropped (red frame)"
    fig.text(0.5, 1 - TITLE_INCHES / 2 / height, heading, ha="center", va="center", fontsize=9)
    if not shown:
        fig.text(0.5, 0.4 * CELL_INCHES / height, "no synthetic images", ha="center", va="center", fontsize=9)
    pad = 0.04 * CELL_INCHES  # gap around each image, in inches
    for row, c in enumerate(shown):
        members = torch.nonzero(labels == c).flatten()
        bottom = height - TITLE_INCHES - (row + 1) * CELL_INCHES
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        count = f"{int(kept[members].sum())}/{len(members)} kept" if kept_mask is not None else f"{len(members)} images"
        fig.text(0.1 / width, (bottom + CELL_INCHES / 2) / height, f"{name}\n{count}", ha="left", va="center",
                 fontsize=8)
        for col, i in enumerate(members[:per_class].tolist()):
            left = LABEL_INCHES + col * CELL_INCHES
            ax = fig.add_axes(((left + pad) / width, (bottom + pad) / height, (CELL_INCHES - 2 * pad) / width,
                               (CELL_INCHES - 2 * pad) / height))
            image = as_float(synthetic.images[i : i + 1].cpu())[0].clamp(0, 1)
            if image.shape[0] == 1:
                ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            dropped = not bool(kept[i])
            for spine in ax.spines.values():
                spine.set_visible(dropped)
                spine.set_color(DROPPED_COLOUR)
                spine.set_linewidth(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def grid_rows(synthetic: Split, num_classes: int, max_classes: int = 20) -> int:
    """How many class rows `save_sample_grid` draws for ``synthetic``."""
    labels = synthetic.labels.cpu().long()
    return min(sum(bool((labels == c).any()) for c in range(num_classes)), max_classes)

