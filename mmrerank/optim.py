"""The optimiser every mmrerank LightningModule uses: AdamW (no decay on biases and norms), linear warm-up, cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def adamw_warmup_cosine(module: nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                        no_decay: Callable[[str], bool] = lambda name: False,
                        lr_scale: Callable[[nn.Parameter], float] = lambda p: 1.0) -> dict:
    """Lightning's `configure_optimizers` answer for `module`'s trainable parameters.

    Args:
        lr, weight_decay: AdamW settings; parameters with fewer than 2 dimensions (biases, norms) and those named by
            `no_decay` get no weight decay.
        lr_scale: a parameter's learning rate as a multiple of `lr` (e.g. a pretrained tower fine-tuned slowly).
        warmup_steps: linear warm-up from lr / warmup_steps (capped at half the run); then a cosine to 0 at
            `total_steps`.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for n, p in module.named_parameters():
        if p.requires_grad:
            decays = p.ndim >= 2 and not no_decay(n)
            groups.setdefault((weight_decay if decays else 0.0, lr * lr_scale(p)), []).append(p)
    optimizer = torch.optim.AdamW([{"params": params, "weight_decay": wd, "lr": group_lr}
                                   for (wd, group_lr), params in groups.items()], lr=lr)
    total = max(int(total_steps), 1)
    warmup = min(warmup_steps, total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
