"""Training and evaluation loops over in-memory tensors, and state-dict <-> NumPy conversion.

Kept framework-free on purpose: clients, the server's augmented model and the benchmarks all call
these same few functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genfl_torch.data import Split, as_float


@dataclass(frozen=True)
class TrainSettings:
    """Local optimisation settings (SGD), sent by the server each round."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    augment: bool  # random crop + flip, for natural images (CIFAR), never digits
    proximal_mu: float  # FedProx: (mu / 2) * ||w - w_global||^2 added to the loss
    max_steps: int | None  # stop after this many optimiser steps (None: every batch of every epoch)
    fast_cuda: bool  # on CUDA: data moved once, channels_last, bf16 autocast (no effect on CPU)
    # BatchNorm in eval mode while training: normalise with the received running statistics and keep
    # them (the server's augmented model: synthetic batches must not re-define what "normal" is)
    freeze_bn: bool = False


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random 4-pixel-padded crop and horizontal flip (the standard CIFAR recipe).

    The random numbers come from ``generator`` on its own device: on CUDA nothing is copied from the
    host per step (a pageable host-to-device copy would stall the CPU until the GPU caught up).
    """
    n, _, h, w = x.shape
    device = generator.device
    padded = nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator, device=device)
    dx = torch.randint(0, 9, (n,), generator=generator, device=device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None].expand(n, x.shape[1], h, w + 8)
    x = padded.gather(2, rows.to(x.device))
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :].expand(n, x.shape[1], h, w)
    x = x.gather(3, cols.to(x.device))
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def _fast(device: torch.device, enabled: bool) -> bool:
    return enabled and device.type == "cuda"


def _on_device(data: Split, device: torch.device, fast: bool) -> Split:
    """On CUDA the whole (small, uint8) set moves to the device once instead of batch by batch."""
    return Split(data.images.to(device), data.labels.to(device)) if fast else data


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each mini-batch over ``n`` samples; a last batch shorter than half a batch joins
    the previous one. BatchNorm normalises over the batch alone once ResNet-18 has pooled an 8x8
    digit down to 1x1: a tail batch of 2 made one client's model explode (test loss 1e34)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < batch_size / 2:
        bounds[-2:] = [(bounds[-2][0], n)]
    return [(a, b) for a, b in bounds if b - a >= 2]  # BatchNorm cannot train on a single sample


def train(model: nn.Module, data: Split, settings: TrainSettings, device: torch.device, seed: int,
          sample_weights: torch.Tensor | None = None) -> float:
    """SGD over ``data`` for ``settings.epochs``; returns the mean training loss. ``seed`` fixes the order.

    ``sample_weights`` (one non-negative number per sample): each epoch draws ``len(data)`` samples
    with replacement, with probability proportional to the weight, instead of a permutation (same
    steps per epoch, same seeded generator). ``None`` is the plain shuffled pass, bit for bit.

    The CPU path is plain fp32. On CUDA (``settings.fast_cuda``) it runs channels_last under bf16
    autocast, the layout and precision the tensor cores want (see bench/throughput.py).
    """
    if sample_weights is not None:
        sample_weights = torch.as_tensor(sample_weights, dtype=torch.float64).cpu()
        if sample_weights.shape != (len(data),) or not bool((sample_weights >= 0).all()) or not sample_weights.sum() > 0:
            raise ValueError(f"sample_weights: need {len(data)} non-negative weights with a positive sum")
    fast = _fast(device, settings.fast_cuda)
    model.to(device).train()
    if settings.freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    if fast:
        model.to(memory_format=torch.channels_last)
    data = _on_device(data, device, fast)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    anchor = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(seed)
    # CUDA draws its augmentation on the device (see _augment); the CPU path is unchanged.
    augment_generator = torch.Generator(device=device).manual_seed(seed) if fast else generator
    loss_fn = nn.CrossEntropyLoss()
    losses, sizes = [], []
    budget = settings.max_steps if settings.max_steps is not None else float("inf")
    for _ in range(settings.epochs):
        if sample_weights is None:
            order = torch.randperm(len(data), generator=generator)
        else:
            order = torch.multinomial(sample_weights, len(data), replacement=True, generator=generator)
        order = order.to(data.labels.device)  # one copy per epoch
        for start, end in batch_bounds(len(order), settings.batch_size):
            if len(losses) >= budget:
                break
            idx = order[start:end]
            x = as_float(data.images[idx]).to(device, non_blocking=True)
            y = data.labels[idx].to(device, non_blocking=True)
            if settings.augment:
                x = _augment(x, augment_generator)
            if fast:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
                loss = loss_fn(model(x), y)
            if anchor is not None:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * settings.proximal_mu * drift
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # summed once at the end: no per-step host sync or extra kernels
            sizes.append(len(idx))
    if fast:
        model.to(memory_format=torch.contiguous_format)
    optimizer.zero_grad(set_to_none=True)  # the last step's gradients: a model's worth of memory nobody reads
    if not losses:
        return 0.0
    weighted = torch.stack(losses).double() * torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
    return weighted.sum().item() / sum(sizes)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, device: torch.device, batch_size: int, fast_cuda: bool) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``data``; bf16 + channels_last on CUDA."""
    fast = _fast(device, fast_cuda)
    model.to(device).eval()
    if fast:
        model.to(memory_format=torch.channels_last)
    data = _on_device(data, device, fast)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(data), batch_size):
        x = as_float(data.images[start : start + batch_size]).to(device)
        y = data.labels[start : start + batch_size].to(device)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    if fast:
        model.to(memory_format=torch.contiguous_format)
    return loss_sum.item() / max(len(data), 1), correct.item() / max(len(data), 1)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Every persistent tensor (weights and BatchNorm buffers) as NumPy, in state-dict order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of `state_to_numpy`; a missing or unexpected key is an error, not a silent skip."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
