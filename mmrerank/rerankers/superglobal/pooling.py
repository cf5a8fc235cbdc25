"""SuperGlobal's pooling operators (Shao et al., ICCV 2023): GeM+, Regional-GeM and Scale-GeM.

Plain functions over tensors, with no learnable state. The typical pipeline for one image is

    descriptor_s = gem_plus(regional_gem(feature_map_s))        # [B, C] per scale s
    descriptor = F.normalize(scale_gem(torch.stack(descriptors)))  # [B, C]

where the final L2 normalisation is left to the caller.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def gem_plus(x: Tensor, p: float = 4.6, eps: float = 1e-8) -> Tensor:
    """Generalised-mean pooling with a fixed exponent: `(mean_hw clamp(x, eps)^p)^(1/p)`.

    Args:
        x: feature maps `[B, C, H, W]`.
        p: the power; SuperGlobal fixes it at 4.6 instead of learning it.
        eps: lower clamp, so that `x^p` is defined (and finite after `^(1/p)`) for non-positive activations.

    Returns:
        Pooled descriptors `[B, C]` (not normalised).
    """
    if x.dim() != 4:
        raise ValueError(f"gem_plus expects [B, C, H, W], got shape {tuple(x.shape)}")
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def regional_gem(x: Tensor, p: float = 2.5, size: int = 5, eps: float = 1e-8) -> Tensor:
    """Regional-GeM: mix each activation with the power mean of its `size x size` neighbourhood.

    Computes `0.5 * x + 0.5 * LP(x)`, where `LP(x)` at every position is `(mean over the window of x^p)^(1/p)`
    on the map reflection-padded by `size // 2`, so the output keeps the input's spatial size. This equals
    `LPPool2d(p, size, stride=1)` applied to `x / (size^2)^(1/p)`, written as an average pool of `x^p` because
    that form needs no rescaling constant.

    Args:
        x: feature maps `[B, C, H, W]`; reflection padding needs `H, W > size // 2`.
        p: the exponent of the regional power mean.
        size: the (odd) window side.
        eps: lower clamp applied before the power (only inside `LP`; the residual half uses `x` as given).

    Returns:
        Feature maps `[B, C, H, W]`.
    """
    if x.dim() != 4:
        raise ValueError(f"regional_gem expects [B, C, H, W], got shape {tuple(x.shape)}")
    if size < 1 or size % 2 == 0:
        # An even window with `size // 2` padding would shift the map and change its size by one.
        raise ValueError(f"size must be a positive odd integer, got {size}")
    pad = size // 2
    if pad >= min(x.shape[-2:]):
        raise ValueError(f"reflection padding {pad} needs H and W > {pad}, got {tuple(x.shape[-2:])}")
    powered = x.clamp(min=eps).pow(p)
    if pad:
        powered = F.pad(powered, (pad, pad, pad, pad), mode="reflect")
    # Padding x^p equals padding x and then powering: reflection only copies values.
    local = F.avg_pool2d(powered, kernel_size=size, stride=1).pow(1.0 / p)
    return 0.5 * x + 0.5 * local


def scale_gem(descriptors: Tensor, p: float = math.inf) -> Tensor:
    """Scale-GeM: fuse the descriptors one image gets at several scales.

    With `p = inf` (SuperGlobal's default) each scale's descriptor is L2-normalised and the result is their
    element-wise max. With a finite `p`, the descriptors are shifted by `gamma`, the minimum over all entries
    (so that every base is non-negative), power-averaged over scales and shifted back:
    `((1/S) sum_s (x_s - gamma)^p)^(1/p) + gamma`. As `p` grows this approaches the element-wise max of the
    (shifted) inputs, so on unit-norm inputs the finite form tends to the `inf` form.

    Args:
        descriptors: per-scale descriptors `[S, B, C]`.
        p: the power over scales, `> 0` or `math.inf`.

    Returns:
        Fused descriptors `[B, C]`, not normalised (the caller applies the final L2 normalisation).
    """
    if descriptors.dim() != 3:
        raise ValueError(f"scale_gem expects [S, B, C], got shape {tuple(descriptors.shape)}")
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    if math.isinf(p):
        return F.normalize(descriptors, dim=-1).amax(dim=0)
    gamma = descriptors.min()
    return (descriptors - gamma).pow(p).mean(dim=0).pow(1.0 / p) + gamma
