"""SuperGlobal descriptors: a CNN's last feature map -> Regional-GeM -> GeM+ -> L2 -> (head) per scale -> Scale-GeM.

The backbone is any timm CNN by name (its last stage through `forward_features`), or the convolutional image
tower of an mmrerank first stage (`first_stage:<open_clip model name>` with that stage's checkpoint), which is
how the synthetic image-to-image benchmark gets descriptors that mean something without a download.

With CVNet weights the extractor runs as the official SuperGlobal test code does (github.com/ShihaoShao-GH/SuperGlobal,
read at commit 8694696): BGR input with BGR mean / std and the model's own multi-scale resizing
(`cvnet_preprocessing`), and ReLU+ inside the backbone (`relu_plus`). Both are off for other backbones, which were
trained on RGB with plain ReLUs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from mmrerank.rerankers.superglobal.pooling import gem_plus, regional_gem, scale_gem

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# The official test loader (test/dataset.py: `_MEAN`, `_SD`, "in BGR order"; `_prepare_im`) reads images with
# cv2.imread (BGR), casts them to float32, divides by 255 and normalises channel c by `(x - _MEAN[c]) / _SD[c]`:
# ImageNet's statistics listed blue first, because CVNet's pycls ResNets were trained on cv2's BGR images.
CVNET_MEAN_BGR, CVNET_STD_BGR = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)
# ReLU+'s floor (modules/coarse_retrieval/relup.py: `relup(alpha)` is `x.clamp(alpha)`; model/resnet.py: 0.014).
RELU_PLUS_THRESHOLD = 0.014


@dataclass
class PoolingConfig:
    """How a feature map becomes a descriptor. The defaults are SuperGlobal's; `plain_gem()` is the baseline.

    Attributes:
        scales: input resize factors.
        gem_p: GeM exponent (GeM+: 4.6; classic GeM: 3).
        regional: apply Regional-GeM (`regional_p`, `regional_size`) before pooling.
        scale_p: Scale-GeM exponent over scales (`inf`: max of the L2-normalised per-scale descriptors).
    """

    scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)
    gem_p: float = 4.6
    regional: bool = True
    regional_p: float = 2.5
    regional_size: int = 5
    scale_p: float = math.inf

    @classmethod
    def plain_gem(cls) -> PoolingConfig:
        """Single-scale GeM with p = 3, no Regional-GeM: the usual global descriptor."""
        return cls(scales=(1.0,), gem_p=3.0, regional=False)


# CVNet (and the SuperGlobal release) store a pycls-style ResNet under `encoder_q.` plus a 2048 -> 2048 linear head;
# timm's ResNet names the same tensors differently. The mapping, with {i} the stage 1-4 and {j} the 1-based block:
#   encoder_q.stem.conv / .stem.bn           -> conv1 / bn1
#   encoder_q.s{i}.b{j}.f.a / .f.a_bn         -> layer{i}.{j-1}.conv1 / .bn1   (1x1 reduce)
#   encoder_q.s{i}.b{j}.f.b / .f.b_bn         -> layer{i}.{j-1}.conv2 / .bn2   (3x3, carries the stride)
#   encoder_q.s{i}.b{j}.f.c / .f.c_bn         -> layer{i}.{j-1}.conv3 / .bn3   (1x1 expand)
#   encoder_q.s{i}.b{j}.proj / .bn            -> layer{i}.{j-1}.downsample.0 / .downsample.1
#   encoder_q.head.fc                         -> head (our per-scale linear head)
_CVNET_RULES = [
    (re.compile(r"^stem\.conv\."), lambda m: "conv1."),
    (re.compile(r"^stem\.bn\."), lambda m: "bn1."),
    (re.compile(r"^s(\d)\.b(\d+)\.f\.([abc])(_bn)?\."),
     lambda m: f"layer{m[1]}.{int(m[2]) - 1}.{'bn' if m[4] else 'conv'}{'abc'.index(m[3]) + 1}."),
    (re.compile(r"^s(\d)\.b(\d+)\.proj\."), lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.0."),
    (re.compile(r"^s(\d)\.b(\d+)\.bn\."), lambda m: f"layer{m[1]}.{int(m[2]) - 1}.downsample.1."),
]


def cvnet_to_timm(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a CVNet-style global-model state dict into a timm ResNet trunk's and the linear head's (see above).

    Returns:
        `(trunk_state, head_state)`; keys outside the mapping (CVNet's reranking modules) are dropped.
    """
    trunk, head = {}, {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("encoder_q.")
        if key.startswith("head.fc."):
            head[key.removeprefix("head.fc.")] = value
            continue
        for pattern, rename in _CVNET_RULES:
            match = pattern.match(key)
            if match:
                trunk[rename(match) + key[match.end():]] = value
                break
    return trunk, head


class ReLUPlus(nn.Module):
    """ReLU+ (SuperGlobal): `max(x, threshold)`, a ReLU whose floor is raised from 0 to a small positive value."""

    def __init__(self, threshold: float = RELU_PLUS_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> the same shape, every value below `threshold` replaced by it."""
        return x.clamp(min=self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


# Where the official ResNet clamps (model/resnet.py, with `SupG.relup` True as in the paper's runs), in timm's
# Bottleneck names (act1 / act2 after bn1 / bn2 inside the residual branch, act3 after the residual sum):
# - `ResBlock.relup` replaces the ReLU after the residual sum in every block whose width is not 2048, so in stages
#   1-3 (widths 256, 512, 1024); stage 4 keeps `relup(0.)`, a ReLU. -> act3 in layer1-3.
# - `BottleneckTransform.a_relu` / `b_relu` clamp at 0.014 where `w_out == 256 and relup_`, so in stage 1 only.
#   (ResBlock passes the *class* `relup` as `relup_`, which is truthy: upstream these two clamps are on even with
#   SupG.relup False.) -> act1, act2 in layer1.
# - The stem keeps its nn.ReLU.
_RELU_PLUS_SITES = {1: ("act1", "act2", "act3"), 2: ("act3",), 3: ("act3",), 4: ()}


def set_relu_plus(trunk: nn.Module, enabled: bool = True, threshold: float = RELU_PLUS_THRESHOLD) -> None:
    """Switch ReLU+ on (or back to ReLU) in a timm bottleneck ResNet, in place, where the official ResNet has it.

    Args:
        trunk: a timm `ResNet` of `Bottleneck` blocks (`layer1`-`layer4`), the shape of CVNet's backbones.
        enabled: ReLU+ at the official sites (see `_RELU_PLUS_SITES`), or plain ReLUs everywhere.
        threshold: the clamp's floor.

    Raises:
        ValueError: the trunk is not a timm bottleneck ResNet whose block activations are ReLUs (or ReLU+).
    """
    from timm.models.resnet import Bottleneck

    stages = [getattr(trunk, f"layer{i}", None) for i in range(1, 5)]
    if any(stage is None for stage in stages) or not all(isinstance(b, Bottleneck) for s in stages for b in s):
        raise ValueError(f"ReLU+ follows the official bottleneck ResNet: it needs a timm ResNet with Bottleneck "
                         f"blocks in layer1-layer4, got {type(trunk).__name__}")
    for index, stage in enumerate(stages, start=1):
        for block in stage:
            for name in ("act1", "act2", "act3"):
                current = getattr(block, name)
                if not isinstance(current, (nn.ReLU, ReLUPlus)):
                    raise ValueError(f"ReLU+ replaces ReLUs, but layer{index}'s {name} is {type(current).__name__}")
                on = enabled and name in _RELU_PLUS_SITES[index]
                setattr(block, name, ReLUPlus(threshold) if on else nn.ReLU(inplace=True))


def build_backbone(name: str, pretrained: bool = False, checkpoint: str | None = None) -> tuple[nn.Module, tuple]:
    """A CNN whose `forward_features` gives the last feature map `[B, C, h, w]`, and its input normalisation.

    Args:
        name: a timm model name (`resnet50`, ...) or `first_stage:<open_clip model>` for the image tower of a
            first stage (a timm trunk inside open_clip), loaded from `checkpoint`.
        pretrained: timm pretrained weights (needs the network once).
        checkpoint: weights to load: a first stage's checkpoint, or a timm state dict (safetensors / weights-only).
    """
    if name.startswith("first_stage:"):
        from mmrerank.retrieval.clip import CLIPEncoder

        encoder = CLIPEncoder(name.split(":", 1)[1])
        if checkpoint:
            encoder.load_weights(checkpoint)
        trunk = getattr(encoder.model.visual, "trunk", None)
        if trunk is None:  # a ViT tower
            raise ValueError(f"{name}: the first stage's image tower is not a timm CNN (SuperGlobal needs a CNN)")
        return trunk, (CLIP_MEAN, CLIP_STD)
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}")
    trunk = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    if checkpoint:
        from mmrerank.retrieval.clip import load_state_dict

        trunk.load_state_dict(load_state_dict(checkpoint), strict=False)
    mean = trunk.pretrained_cfg.get("mean", IMAGENET_MEAN)
    std = trunk.pretrained_cfg.get("std", IMAGENET_STD)
    return trunk, (tuple(mean), tuple(std))


class SuperGlobalExtractor(nn.Module):
    """Global descriptors for images, batched, on the module's device.

    Args:
        backbone: see `build_backbone`.
        pooling: the pooling pipeline.
        head_dim: add a linear head (CVNet-shaped backbones: 2048 -> 2048) applied per scale after L2.
        pretrained, checkpoint: see `build_backbone`.
        min_side: images whose short side is smaller are upsampled to it first (small query crops would give
            feature maps too small for Regional-GeM's 5 x 5 window). The official code has no such step; at its
            default it only touches images smaller than the benchmarks' query crops.
        cvnet_checkpoint: CVNet-style global-model weights, see `load_cvnet`.
        cvnet_preprocessing: preprocess as the official test code: BGR channel order with BGR mean / std, and
            per-scale resizing to `int(side * scale)` without antialiasing. Default: on iff `cvnet_checkpoint`.
        relu_plus: ReLU+ in the backbone (see `set_relu_plus`; needs a bottleneck ResNet). Default: on iff
            `cvnet_checkpoint`.
    """

    def __init__(self, backbone: str = "resnet50", pooling: PoolingConfig | None = None, head_dim: int | None = None,
                 pretrained: bool = False, checkpoint: str | None = None, min_side: int = 128,
                 cvnet_checkpoint: str | None = None, cvnet_preprocessing: bool | None = None,
                 relu_plus: bool | None = None) -> None:
        super().__init__()
        self.min_side = min_side
        self.trunk, (mean, std) = build_backbone(backbone, pretrained, checkpoint)
        self.pooling = pooling or PoolingConfig()
        # CVNet's weights were trained and evaluated in the official setting; every other backbone here was not.
        self.cvnet_preprocessing = bool(cvnet_checkpoint) if cvnet_preprocessing is None else cvnet_preprocessing
        self.relu_plus = bool(cvnet_checkpoint) if relu_plus is None else relu_plus
        if self.cvnet_preprocessing:
            mean, std = CVNET_MEAN_BGR, CVNET_STD_BGR
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        channels = self.trunk.num_features
        self.head = nn.Linear(channels, head_dim) if head_dim else None
        if cvnet_checkpoint:
            self.load_cvnet(cvnet_checkpoint)
        if self.relu_plus:
            set_relu_plus(self.trunk)
        # channels-last weights and inputs: oneDNN's CPU convolutions run about 2x faster in that layout here (same
        # descriptors to 1e-7; BENCHMARKS.md, "The embedded default")
        self.trunk.to(memory_format=torch.channels_last)

    def load_cvnet(self, path: str) -> None:
        """Load CVNet-style global-model weights (trunk and head) from a local file, mapped by `cvnet_to_timm`.

        Raises:
            ValueError: the file's tensors do not cover this trunk (names or shapes), or it has a head and this
                extractor none.
        """
        from mmrerank.retrieval.clip import load_state_dict

        raw = load_state_dict(path) if path.endswith(".safetensors") else _weights_only(path)
        trunk_state, head_state = cvnet_to_timm(raw)
        try:
            missing, unexpected = self.trunk.load_state_dict(trunk_state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{path}: not a CVNet global model for this trunk: {err}") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(f"{path}: not a CVNet global model for this trunk; missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        if head_state:
            if self.head is None:
                raise ValueError(f"{path} has a linear head: build the extractor with head_dim="
                                 f"{head_state['weight'].shape[0]}")
            self.head.load_state_dict(head_state)

    def normalise(self, pixels: Tensor) -> Tensor:
        """`[B, 3, H, W]` RGB in [0, 1] -> the network's input: `(x - mean) / std` per channel, in the network's
        channel order (BGR with `cvnet_preprocessing`: channel 0 is blue, as cv2.imread gives it upstream)."""
        if self.cvnet_preprocessing:
            pixels = pixels.flip(1)
        return (pixels - self.mean) / self.std

    def _rescale(self, pixels: Tensor, scale: float) -> Tensor:
        """One scale's input `[B, 3, h, w]` from the normalised image `[B, 3, H, W]`."""
        if scale == 1.0:
            return pixels
        if self.cvnet_preprocessing:
            # model/resnet.py (`ResNet.forward`) resizes the normalised tensor with torchvision's
            # `resize(x, [int(H * s), int(W * s)])`: bilinear, and without antialiasing for tensors in the
            # torchvision releases of its time (antialias became the default in 0.17, January 2024).
            size = (int(pixels.shape[-2] * scale), int(pixels.shape[-1] * scale))
            return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=False)
        return F.interpolate(pixels, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1)

    def forward(self, pixels: Tensor) -> Tensor:
        """`[B, 3, H, W]` RGB in [0, 1] -> `[B, D]` unit-norm descriptors."""
        pixels = self.normalise(pixels)
        if min(pixels.shape[-2:]) < self.min_side:
            pixels = F.interpolate(pixels, scale_factor=self.min_side / min(pixels.shape[-2:]), mode="bilinear",
                                   align_corners=False)
        per_scale = []
        for scale in self.pooling.scales:
            scaled = self._rescale(pixels, scale).contiguous(memory_format=torch.channels_last)
            fmap = self.trunk.forward_features(scaled)
            if self.pooling.regional:
                fmap = regional_gem(fmap, p=self.pooling.regional_p, size=self.pooling.regional_size)
            desc = F.normalize(gem_plus(fmap, p=self.pooling.gem_p), dim=-1)
            per_scale.append(self.head(desc) if self.head is not None else desc)
        combined = per_scale[0] if len(per_scale) == 1 else scale_gem(torch.stack(per_scale), p=self.pooling.scale_p)
        return F.normalize(combined, dim=-1)

    @torch.no_grad()
    def extract(self, images: Sequence[Image.Image], batch_size: int = 32, progress: bool = True) -> Tensor:
        """Descriptors `[N, D]` for PIL images; images of one batch are padded to a common size only if they
        share it, so batches group equal sizes (query crops differ in size and go one by one)."""
        self.eval()
        device = self.mean.device
        out: list[Tensor | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.size, []).append(i)
        batches = [rows[s:s + batch_size] for rows in by_size.values() for s in range(0, len(rows), batch_size)]
        for rows in tqdm(batches, desc="superglobal descriptors", disable=not progress, leave=False):
            pixels = torch.stack([_to_tensor(images[i]) for i in rows]).to(device)
            for i, desc in zip(rows, self(pixels)):
                out[i] = desc
        return torch.stack(out)  # type: ignore[arg-type]


def _weights_only(path: str) -> dict[str, Tensor]:
    """A `.pth` state dict (CVNet saves `{"model_state": ...}`), unpickled with `weights_only=True`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model_state", state.get("state_dict", state))


def _to_tensor(img: Image.Image) -> Tensor:
    """PIL RGB -> `[3, H, W]` float in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
