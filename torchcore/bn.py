"""BatchNorm running statistics of a model on one data set (mix.bn_stats=reestimate).

After Eq. (1) the global model's running statistics belong to no data set: a node re-estimates them
for the new weights on its own data, and the server combines the nodes' estimates
(torchcore.mixing.combine_bn_statistics). Like "precise BN": the cumulative average of batch
statistics over one pass, in train mode, no gradients, no augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torchcore.data import Split, as_float
from torchcore.train import batch_bounds


@torch.no_grad()
def bn_statistics(model: nn.Module, data: Split, device: torch.device, batch_size: int) -> dict[str, np.ndarray]:
    """``{"<layer>.running_mean": ..., "<layer>.running_var": ...}`` of ``model`` on ``data``; the model's
    own buffers are left as they were. Empty for a model without BatchNorm."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not layers:
        return {}
    saved = {name: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for name, m in layers.items()}
    model.to(device).train()
    try:
        for m in layers.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        for start, end in batch_bounds(len(data), batch_size):
            model(as_float(data.images[start:end]).to(device))
        return {f"{name}.{buffer}": getattr(m, buffer).detach().cpu().numpy().copy()
                for name, m in layers.items() for buffer in ("running_mean", "running_var")}
    finally:
        for name, m in layers.items():
            m.momentum, mean, var, count = saved[name]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        model.eval()
