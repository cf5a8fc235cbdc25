"""EDJE's vision token source: a frozen vision encoder that turns images into patch tokens `[B, P, D]`.

One class, four kinds of tower, named by a prefix:

- `open_clip:<model>` an open_clip image tower (a local config in `mmrerank/retrieval/model_configs/` or a hub
  model with `pretrained`), its own ViT or a timm trunk.
- `first_stage:<model>`: the same, with weights from a first-stage checkpoint (`CLIPEncoder.save_weights` or a
  `CLIPModule` Lightning checkpoint): the synthetic benchmark's default, so the reranker sees what the retriever saw.
- `timm:<model>`: any timm model.
- `hf:<model>`: a transformers vision model (`google/siglip2-large-patch16-384`, the paper's, or any `AutoModel`
  whose output has `last_hidden_state`; for a SigLIP / CLIP dual checkpoint its vision tower is used), SigLIP2
  NaFlex checkpoints (`google/siglip2-base-patch16-naflex`) included. Its image processor is the PIL one under
  every transformers version (`pil_backend`), as transformers 4 gave it.

Token contract (what `encode` returns, whatever the kind):

- ViT towers: the patch tokens of the last block after the tower's final norm, in row-major order of the patch grid,
  `P = (H / p) * (W / p)`. Prefix tokens (CLS, distillation, registers) are dropped. This is the EDJE paper's
  choice: its SigLIP tokens are the last hidden state, which SigLIP normalises with `post_layernorm`. Per tower:
  open_clip's own ViT: `ln_post` on the last block (what `output_tokens` gives by default); timm ViTs, also as an
  open_clip trunk: `forward_features` (the trunk's `norm`); transformers: `last_hidden_state`, except for CLIP-type
  towers, whose `post_layernorm` only sees the pooled CLS token, so it is applied to the patches here, as open_clip
  does with the same weights (`hf:openai/clip-vit-base-patch32` and `open_clip:ViT-B-32` give the same tokens).
- CNN towers (timm CNNs, open_clip timm trunks such as the tiny ResNet, transformers models whose last hidden state
  is a feature map): stage `feature_index`'s feature map `[C, H, W]` flattened row by row into `P = H * W` tokens of
  width `C`, with no norm (a CNN has none after its stages).
- SigLIP2 NaFlex (`Siglip2VisionModel`, which takes patchified pixels, `pixel_attention_mask` and `spatial_shapes`):
  EDJE's adapter and token store want the same `P` for every image, so by default each image is resized to a square
  `k*p x k*p` grid with `k = floor(sqrt(max_num_patches))`, as the fixed-resolution SigLIP processors squash every
  image: `P = k^2`, no padding. With `keep_aspect_ratio=True` the processor keeps each image's aspect ratio within
  `max_num_patches` patches (what NaFlex is for: document pages); then `P = max_num_patches`, each image's patches
  come first (row-major on its own grid), the padding slots are zeros, and `encode_masked` gives the `[B, P]`
  padding mask for `TokenCompressionAdapter(patches, padding_mask=...)` (plain `encode` refuses, as padding would
  reach the adapter as if it were image content).

Tokens are float32. The source is frozen (eval mode, no gradients): the adapter and the joint encoder are what EDJE
trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import isqrt

import torch
from PIL import Image
from torch import Tensor, nn

KINDS = ("open_clip", "first_stage", "timm", "hf")
# Bumped when the token contract above changes (which tokens, which norm, which pixels): a key for on-disk patch
# caches. 3: `hf:` towers read the PIL processor's pixels under transformers 5 too.
TOKEN_CONTRACT = 3
NAFLEX_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")

Pixels = Tensor | dict[str, Tensor]


def pil_backend() -> dict[str, object]:
    """`AutoImageProcessor.from_pretrained` arguments for the PIL image processor under any transformers version.

    transformers 4 gave the PIL ("slow") processor unless asked otherwise; transformers 5 defaults to the
    torchvision one, whose resize gives other pixels (on tiny models of the released EDJE's format, scores of
    page-sized images moved by 1e-4 to 2e-3). The EDJE authors' evaluation (`evaluate_retrieval.py`) takes 4.x's
    default.
    """
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"backend": "pil"} if major >= 5 else {"use_fast": False}


class VisionTokenSource(nn.Module):
    """A frozen image tower returning patch tokens (the contract is in the module doc).

    Args:
        name: `<kind>:<model>` with kind one of `open_clip`, `first_stage`, `timm`, `hf` (see the module doc).
        pretrained: open_clip pretrained tag / timm `pretrained=True` (needs the network once); ignored for `hf`,
            whose weights always come from `from_pretrained`.
        checkpoint: first-stage weights for `first_stage:` (safetensors or Lightning checkpoint).
        feature_index: for CNN towers, which stage's feature map to take (timm `forward_intermediates` index;
            -1 = the last). Earlier stages keep more spatial detail, which relations and attribute binding need.
            ViT towers always give their last block, so any other value is an error there.
        image_size: input side for timm models built without a pretrained config (tiny offline models).
        max_num_patches: SigLIP2 NaFlex only: the patch budget per image (default: the processor's, 256 for the
            released checkpoints).
        keep_aspect_ratio: SigLIP2 NaFlex only: keep each image's aspect ratio and pad to `max_num_patches` (read
            the tokens with `encode_masked`) instead of resizing every image to one square grid.

    Attributes:
        dim: D, the width of the patch tokens.
        num_patches: P, patch tokens per image (padding slots included for `keep_aspect_ratio`).
        pads: whether tokens come with padding (`keep_aspect_ratio`), so that only `encode_masked` may read them.
    """

    def __init__(self, name: str, pretrained: str | bool | None = None, checkpoint: str | None = None,
                 feature_index: int = -1, image_size: int | None = None, *, max_num_patches: int | None = None,
                 keep_aspect_ratio: bool = False):
        super().__init__()
        kind, _, model = name.partition(":")
        if kind not in KINDS or not model:
            raise ValueError(f"vision source {name!r}: expected '<kind>:<model>' with kind one of {KINDS}")
        self.name, self.kind, self.feature_index = name, kind, feature_index
        self.processor, self.naflex, self.pads, self.grid_side, self.max_num_patches = None, False, False, None, None
        self.extra_norm: nn.Module | None = None  # a final norm the tower does not apply to its patch tokens itself
        if kind == "hf":
            self.tower, self.preprocess, self.is_cnn = self._build_hf(model, max_num_patches, keep_aspect_ratio)
        else:
            if max_num_patches is not None or keep_aspect_ratio:
                raise ValueError(f"vision source {name!r}: max_num_patches / keep_aspect_ratio apply to SigLIP2 "
                                 "NaFlex checkpoints (hf:) only")
            build = self._build_timm if kind == "timm" else self._build_open_clip
            self.tower, self.preprocess, self.is_cnn = build(model, pretrained, checkpoint, image_size)
        if feature_index != -1 and not self.is_cnn:
            raise ValueError(f"vision source {name!r}: feature_index={feature_index} picks a CNN stage; a ViT tower "
                             "gives its last block's patch tokens (leave feature_index at -1)")
        self.requires_grad_(False)
        self.eval()
        tokens, _ = self.encode_masked([Image.new("RGB", (32, 32))])
        self.num_patches, self.dim = int(tokens.shape[1]), int(tokens.shape[2])

    # --- building ---------------------------------------------------------------------------------------------------

    def _build_open_clip(self, model: str, pretrained, checkpoint, image_size) -> tuple[nn.Module, Callable, bool]:
        from mmrerank.retrieval.clip import CLIPEncoder

        encoder = CLIPEncoder(model, pretrained if self.kind == "open_clip" else None)
        if self.kind == "first_stage":
            if not checkpoint:
                raise ValueError("a first_stage: vision source needs `checkpoint` (the first stage's weights)")
            encoder.load_weights(checkpoint)
        visual = encoder.model.visual
        if hasattr(visual, "trunk"):  # a timm tower inside open_clip: read it as a timm model
            return visual.trunk, encoder.preprocess, not hasattr(visual.trunk, "num_prefix_tokens")
        return visual, encoder.preprocess, False

    @staticmethod
    def _build_timm(model: str, pretrained, checkpoint, image_size) -> tuple[nn.Module, Callable, bool]:
        import timm

        kwargs = {"img_size": image_size} if image_size and "vit" in model else {}
        net = timm.create_model(model, pretrained=bool(pretrained), num_classes=0, **kwargs)
        cfg = timm.data.resolve_data_config({}, model=net)
        if image_size:
            cfg["input_size"] = (3, image_size, image_size)
        return net, timm.data.create_transform(**cfg), not hasattr(net, "num_prefix_tokens")

    def _build_hf(self, model: str, max_num_patches: int | None,
                  keep_aspect_ratio: bool) -> tuple[nn.Module, Callable | None, bool]:
        from transformers import AutoImageProcessor, AutoModel

        net = AutoModel.from_pretrained(model)
        net = getattr(net, "vision_model", net)  # SigLIP / CLIP dual models: keep the vision tower
        if hasattr(net, "pre_layrnorm") and hasattr(net, "post_layernorm"):  # CLIP-type: norms the pooled CLS only
            self.extra_norm = net.post_layernorm
        self.processor = AutoImageProcessor.from_pretrained(model, **pil_backend())
        self.naflex = all(key in getattr(self.processor, "model_input_names", ()) for key in NAFLEX_INPUTS)
        if not self.naflex:
            if max_num_patches is not None or keep_aspect_ratio:
                raise ValueError(f"vision source hf:{model}: max_num_patches / keep_aspect_ratio apply to SigLIP2 "
                                 f"NaFlex checkpoints only; its processor is {type(self.processor).__name__}")
            return net, lambda img: self.processor(images=img, return_tensors="pt")["pixel_values"][0], False
        self.max_num_patches = int(max_num_patches or self.processor.max_num_patches)
        if self.max_num_patches < 1:
            raise ValueError(f"vision source hf:{model}: max_num_patches must be >= 1, got {self.max_num_patches}")
        self.pads, self.grid_side = keep_aspect_ratio, isqrt(self.max_num_patches)
        return net, None, False

    # --- inputs -----------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def train(self, mode: bool = True) -> VisionTokenSource:
        return super().train(False)  # frozen: batch-norm statistics and dropout stay in eval mode

    def pixels(self, images: Sequence[Image.Image]) -> Pixels:
        """The tower's inputs from PIL images.

        Returns:
            `[B, 3, S, S]` pixels; for SigLIP2 NaFlex the processor's dict: `pixel_values [B, N, 3 * p * p]`
            (patchified), `pixel_attention_mask [B, N]` (1 = a real patch) and `spatial_shapes [B, 2]` (rows, columns).
        """
        images = [img.convert("RGB") for img in images]
        if not self.naflex:
            return torch.stack([self.preprocess(img) for img in images])
        if self.pads:
            batch = self.processor(images=images, max_num_patches=self.max_num_patches, return_tensors="pt")
        else:
            # One k x k grid for every image: resize here (bilinear, as Siglip2ImageProcessor) so that the
            # processor only rescales, normalises and patchifies.
            side = self.grid_side * int(self.processor.patch_size)
            images = [img.resize((side, side), Image.Resampling.BILINEAR) for img in images]
            batch = self.processor(images=images, max_num_patches=self.grid_side ** 2, do_resize=False,
                                   return_tensors="pt")
        return {key: batch[key] for key in NAFLEX_INPUTS}

    # --- tokens -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def patch_tokens_masked(self, pixels: Pixels) -> tuple[Tensor, Tensor]:
        """Patch tokens with their padding mask.

        Args:
            pixels: what `pixels` returns.

        Returns:
            `[B, P, D]` float32 patch tokens (zeros in padding slots) and a `[B, P]` bool mask, True where a slot is
            padding (all False unless `pads`), the convention of `TokenCompressionAdapter`'s `padding_mask`.
        """
        if self.naflex:
            inputs = {key: value.to(self.device) for key, value in pixels.items()}
            tokens = self.tower(**inputs).last_hidden_state.float()
            padding = inputs["pixel_attention_mask"] == 0
            return tokens.masked_fill(padding[..., None], 0.0), padding
        tokens = self._fixed_tokens(pixels.to(self.device))
        return tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def _fixed_tokens(self, pixels: Tensor) -> Tensor:
        """`[B, 3, S, S]` -> `[B, P, D]` float32 for the fixed-resolution towers."""
        if self.is_cnn:
            if self.kind == "hf":
                return self._flatten_map(self.tower(pixel_values=pixels).last_hidden_state)
            fmap = self.tower.forward_intermediates(pixels, indices=[self.feature_index], intermediates_only=True)[0]
            return self._flatten_map(fmap)
        if self.kind == "hf":
            return self._hf_patches(pixels)
        if hasattr(self.tower, "num_prefix_tokens"):  # timm ViT (also as an open_clip trunk): after `norm`
            return self.tower.forward_features(pixels)[:, self.tower.num_prefix_tokens:].float()
        # open_clip's own ViT: the last block through `ln_post`, class token dropped, whatever its pooling.
        out = self.tower.forward_intermediates(pixels, indices=1, normalize_intermediates=True,
                                               intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][-1].float()

    @staticmethod
    def _flatten_map(fmap: Tensor) -> Tensor:
        return fmap.flatten(2).transpose(1, 2).float()  # [B, C, H, W] -> [B, H*W, C], row by row

    def _hf_patches(self, pixels: Tensor) -> Tensor:
        hidden = self.tower(pixel_values=pixels).last_hidden_state
        if hidden.dim() == 4:  # a transformers CNN: a feature map
            return self._flatten_map(hidden)
        patch = getattr(self.tower.config, "patch_size", None)
        if isinstance(patch, int):
            # Prefix tokens (CLS, registers) come first: whatever exceeds the patch grid is prefix.
            grid = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
            hidden = hidden[:, max(hidden.shape[1] - grid, 0):]
        if self.extra_norm is not None:
            hidden = self.extra_norm(hidden)
        return hidden.float()

    def patch_tokens(self, pixels: Pixels) -> Tensor:
        """What `pixels` returns -> `[B, P, D]` float32 patch tokens (no padding; see `patch_tokens_masked`)."""
        self._refuse_padding()
        return self.patch_tokens_masked(pixels)[0]

    def encode(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> `[B, P, D]` patch tokens (no padding; see `encode_masked`)."""
        self._refuse_padding()
        return self.patch_tokens_masked(self.pixels(images))[0]

    def encode_masked(self, images: Sequence[Image.Image]) -> tuple[Tensor, Tensor]:
        """PIL images -> `[B, P, D]` patch tokens and the `[B, P]` bool padding mask (True = padding)."""
        return self.patch_tokens_masked(self.pixels(images))

    def _refuse_padding(self) -> None:
        if self.pads:
            raise ValueError(f"vision source {self.name!r} with keep_aspect_ratio=True pads its tokens to "
                             f"{self.max_num_patches}: read them with encode_masked() and pass the mask to "
                             "TokenCompressionAdapter(patches, padding_mask=...)")
