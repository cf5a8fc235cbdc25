"""EDJE's vision token source: a frozen vision encoder that turns images into patch tokens `[B, P, D]`.

One class, four kinds of tower, named by a prefix:

- `open_clip:<model>` an open_clip image tower (a local config in `mmrerank/retrieval/model_configs/` or a hub
  model with `pretrained`); ViT towers give their patch tokens (`output_tokens`), timm-trunk towers (the tiny ResNet) a
  feature map, flattened row by row.
- `first_stage:<model>`: the same, with weights from a first-stage checkpoint (`CLIPEncoder.save_weights` or a
  `CLIPModule` Lightning checkpoint): the synthetic benchmark's default, so the reranker sees what the retriever saw.
- `timm:<model>`: any timm model; ViTs give patch tokens (prefix tokens dropped), CNNs a feature map.
- `hf:<model>`: a transformers vision model (`google/siglip2-large-patch16-384`, the paper's, or any
  `AutoModel` whose output has `last_hidden_state`; for a SigLIP / CLIP checkpoint its vision tower is used).

The source is frozen (eval mode, no gradients): the adapter and the joint encoder are what EDJE trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor, nn

KINDS = ("open_clip", "first_stage", "timm", "hf")


class VisionTokenSource(nn.Module):
    """A frozen image tower returning patch tokens.

    Args:
        name: `<kind>:<model>` with kind one of `open_clip`, `first_stage`, `timm`, `hf` (see the module doc).
        pretrained: open_clip pretrained tag / timm `pretrained=True` (needs the network once); ignored for `hf`,
            whose weights always come from `from_pretrained`.
        checkpoint: first-stage weights for `first_stage:` (safetensors or Lightning checkpoint).
        feature_index: for CNN trunks, which stage's feature map to take (timm `forward_intermediates` index;
            -1 = the last). Earlier stages keep more spatial detail, which relations and attribute binding need.
        image_size: input side for timm models built without a pretrained config (tiny offline models).

    Attributes:
        dim: D, the width of the patch tokens.
        num_patches: P, patch tokens per image.
    """

    def __init__(self, name: str, pretrained: str | bool | None = None, checkpoint: str | None = None,
                 feature_index: int = -1, image_size: int | None = None):
        super().__init__()
        kind, _, model = name.partition(":")
        if kind not in KINDS or not model:
            raise ValueError(f"vision source {name!r}: expected '<kind>:<model>' with kind one of {KINDS}")
        self.name, self.kind, self.feature_index = name, kind, feature_index
        self.tower, self.preprocess, self.is_cnn = self._build(kind, model, pretrained, checkpoint, image_size)
        self.requires_grad_(False)
        self.eval()
        probe = self.preprocess(Image.new("RGB", (32, 32)))[None]
        with torch.no_grad():
            shape = self.patch_tokens(probe).shape
        self.num_patches, self.dim = int(shape[1]), int(shape[2])

    @staticmethod
    def _build(kind: str, model: str, pretrained, checkpoint, image_size):
        if kind in ("open_clip", "first_stage"):
            from mmrerank.retrieval.clip import CLIPEncoder

            encoder = CLIPEncoder(model, pretrained if kind == "open_clip" else None)
            if kind == "first_stage":
                if not checkpoint:
                    raise ValueError("a first_stage: vision source needs `checkpoint` (the first stage's weights)")
                encoder.load_weights(checkpoint)
            visual = encoder.model.visual
            if hasattr(visual, "trunk"):  # a timm tower inside open_clip: take the trunk's feature maps
                return visual.trunk, encoder.preprocess, True
            visual.output_tokens = True
            return visual, encoder.preprocess, False
        if kind == "timm":
            import timm

            kwargs = {"img_size": image_size} if image_size and "vit" in model else {}
            net = timm.create_model(model, pretrained=bool(pretrained), num_classes=0, **kwargs)
            cfg = timm.data.resolve_data_config({}, model=net)
            if image_size:
                cfg["input_size"] = (3, image_size, image_size)
            return net, timm.data.create_transform(**cfg), not hasattr(net, "num_prefix_tokens")
        from transformers import AutoImageProcessor, AutoModel

        net = AutoModel.from_pretrained(model)
        net = getattr(net, "vision_model", net)  # SigLIP / CLIP dual models: keep the vision tower
        processor = AutoImageProcessor.from_pretrained(model)
        return net, lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0], False

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def train(self, mode: bool = True) -> VisionTokenSource:
        return super().train(False)  # frozen: batch-norm statistics and dropout stay in eval mode

    def pixels(self, images: Sequence[Image.Image]) -> Tensor:
        """`[B, 3, S, S]` inputs from PIL images."""
        return torch.stack([self.preprocess(img.convert("RGB")) for img in images])

    @torch.no_grad()
    def patch_tokens(self, pixels: Tensor) -> Tensor:
        """`[B, 3, S, S]` -> `[B, P, D]` float32 patch tokens."""
        pixels = pixels.to(self.device)
        if self.is_cnn:
            fmap = self.tower.forward_intermediates(pixels, indices=[self.feature_index], intermediates_only=True)[0]
            return fmap.flatten(2).transpose(1, 2).float()  # [B, C, H, W] -> [B, H*W, C], row by row
        if self.kind == "hf":
            return self.tower(pixel_values=pixels).last_hidden_state.float()
        if self.kind == "timm":
            return self.tower.forward_features(pixels)[:, self.tower.num_prefix_tokens:].float()
        return self.tower(pixels)[1].float()  # open_clip ViT with output_tokens: (pooled, tokens)

    def encode(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> `[B, P, D]` patch tokens."""
        return self.patch_tokens(self.pixels(images))
