"""BatchNorm running statistics of a model on one data set (mix.bn_stats=reestimate).

After Eq. (1) the global model's running statistics belong to no data set: a node re-estimates them
for the new weights on its own data, and the server combines the nodes' estimates
(genfl_protocol.mixing.combine_bn_statistics, the law of total variance across nodes).

Within a node the statistics are those of every activation position of the node's data, whatever
its order: each BatchNorm layer's input is summed per channel in float64 over one pass (count, mean
and sum of squared deviations, merged batch by batch), so the variance keeps the between-batch term
that an average of per-batch variances drops. A deployed node reads its images sorted by class: on
1,200 class-sorted digits in batches of 32 that average gave per-pixel variances 0.041 on average for
a true 0.073 (issue 28 item 2).

The pass runs in train mode (each layer normalises with its batch's statistics, as in "precise BN"),
no gradients, no augmentation, over the data in a shuffled order drawn from ``seed``: the first
layer's statistics do not depend on the order at all, and deeper layers then see inputs normalised
by mixed-class batches rather than by one class's statistics. Same seed, same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from genfl_torch.data import Split, as_float
from genfl_torch.train import batch_bounds


class _Moments:
    """Per-channel count, mean and sum of squared deviations of one layer's input, in float64
    (Chan et al.'s pairwise merge: no cancellation however large the mean)."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach()
        if x.device.type == "mps":  # no float64 there
            x = x.cpu()
        x = x.to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, var * n
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + var * n + delta * delta * (self.count * n / total)
        self.count = total

    def statistics(self, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(mean, unbiased variance), like BatchNorm's own running_var."""
        return (self.mean.to("cpu", dtype).numpy().copy(),
                (self.m2 / (self.count - 1)).to("cpu", dtype).numpy().copy())


@torch.no_grad()
def bn_statistics(model: nn.Module, data: Split, device: torch.device, batch_size: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``{"<layer>.running_mean": ..., "<layer>.running_var": ...}`` of ``model`` on ``data``: the mean
    and unbiased variance over every activation position of ``data``, per channel; ``seed`` draws the
    order of the pass. The model's own buffers are left as they were. Empty for a model without
    BatchNorm; fewer than 2 images raise ValueError."""
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    if not layers:
        return {}
    if len(data) < 2:
        raise ValueError(f"BatchNorm statistics need at least 2 images; this node has {len(data)}")
    saved = {name: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for name, m in layers.items()}
    moments = {name: _Moments() for name in layers}
    hooks = [m.register_forward_pre_hook(moments[name]) for name, m in layers.items()]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    model.to(device).train()
    try:
        for start, end in batch_bounds(len(data), batch_size):
            model(as_float(data.images[order[start:end]]).to(device))
        out = {}
        for name, m in layers.items():
            out[f"{name}.running_mean"], out[f"{name}.running_var"] = moments[name].statistics(m.running_mean.dtype)
        return out
    finally:
        for hook in hooks:
            hook.remove()
        for name, m in layers.items():  # the train-mode pass moved them
            mean, var, count = saved[name]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        model.eval()
