"""The token contract of `VisionTokenSource`, each kind checked against its tower's own forward.

Every tower is a tiny random one built from the real config class; the `hf:` ones are saved with their processor
and loaded through `VisionTokenSource("hf:<folder>")`, the path a user takes with a hub checkpoint. The references
preprocess with the PIL image processor (transformers 4.x's default, which `hf:` sources ask for under 5.x too).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmrerank.rerankers.edje.adapter import TokenCompressionAdapter
from mmrerank.rerankers.edje.vision import VisionTokenSource


def images() -> list[Image.Image]:
    """Three images of different aspect ratios with some content (random noise, fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(32, 32), (24, 8), (40, 30)]  # (width, height)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
            for w, h in sizes]


@pytest.fixture(scope="module")
def naflex_folder(tmp_path_factory):
    """A tiny SigLIP2 NaFlex checkpoint: patch 8, a 4x4 position grid, a budget of 16 patches."""
    from transformers import Siglip2ImageProcessor, Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("naflex")
    config = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 patch_size=8, num_patches=16)
    Siglip2VisionModel(config).eval().save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(folder)
    return folder


def reference_naflex(folder, image: Image.Image, max_num_patches: int = 16):
    """The model's own forward on the processor's output for one image: `[N, D]` hidden states and its grid."""
    from transformers import AutoImageProcessor, Siglip2VisionModel

    model = Siglip2VisionModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    inputs = processor(images=image, max_num_patches=max_num_patches, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state[0]
    return hidden, tuple(inputs["spatial_shapes"][0].tolist())


def test_siglip2_naflex_square_grid_matches_the_model(naflex_folder):
    source = VisionTokenSource(f"hf:{naflex_folder}")
    assert (source.num_patches, source.dim, source.pads) == (16, 32, False)
    batch = images()
    tokens = source.encode(batch)
    assert tokens.shape == (3, 16, 32)
    for image, row in zip(batch, tokens):
        # Square 32 x 32 input: the processor itself gives a 4 x 4 grid, nothing padded.
        expected, grid = reference_naflex(naflex_folder, image.resize((32, 32), Image.Resampling.BILINEAR))
        assert grid == (4, 4)
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in source.parameters())


def test_siglip2_naflex_budget_not_a_square_uses_the_largest_square_grid(naflex_folder):
    source = VisionTokenSource(f"hf:{naflex_folder}", max_num_patches=20)
    assert source.num_patches == 16  # floor(sqrt(20)) = 4: a 4 x 4 grid


def test_siglip2_naflex_keep_aspect_ratio_pads_and_masks(naflex_folder):
    source = VisionTokenSource(f"hf:{naflex_folder}", keep_aspect_ratio=True)
    assert (source.num_patches, source.pads) == (16, True)
    batch = images()
    tokens, padding = source.encode_masked(batch)
    assert tokens.shape == (3, 16, 32) and padding.shape == (3, 16) and padding.dtype == torch.bool
    # Hand-computed grids: 32 x 32 -> 4 x 4; 24 wide x 8 high -> scale 2 -> 2 x 6 = 12 patches (ceil(3s) * ceil(s)
    # <= 16 holds up to s = 2), 4 padding slots.
    assert padding.sum(1).tolist()[:2] == [0, 4]
    for image, row, pad in zip(batch, tokens, padding):
        expected, (h, w) = reference_naflex(naflex_folder, image)
        n = h * w
        assert pad.tolist() == [False] * n + [True] * (16 - n)
        torch.testing.assert_close(row[:n], expected[:n], atol=1e-4, rtol=1e-4)
        assert not row[n:].any()
    assert reference_naflex(naflex_folder, batch[1])[1] == (2, 6)

    # The mask reaches the adapter: each image's compressed tokens are those of its real patches alone.
    torch.manual_seed(0)
    adapter = TokenCompressionAdapter(32, num_queries=2, out_dim=8, num_heads=2, mlp_ratio=2).eval()
    with torch.no_grad():
        masked = adapter(tokens, padding_mask=padding)
        for i in range(3):
            alone = adapter(tokens[i:i + 1, :int((~padding[i]).sum())])
            torch.testing.assert_close(masked[i:i + 1], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="encode_masked"):
        source.encode(batch)


def test_siglip_fixed_resolution_gives_the_last_hidden_state(tmp_path):
    from transformers import AutoImageProcessor, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    model = SiglipVisionModel(config).eval()
    model.save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    source = VisionTokenSource(f"hf:{tmp_path}")
    image = images()[2]
    with torch.no_grad():
        expected = model(**processor(images=image, return_tensors="pt")).last_hidden_state  # post_layernorm-ed
    assert source.num_patches == 16
    torch.testing.assert_close(source.encode([image]), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="NaFlex"):
        VisionTokenSource(f"hf:{tmp_path}", max_num_patches=16)


def test_hf_clip_gives_patches_only_after_post_layernorm(tmp_path):
    from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():  # a non-trivial final norm, so that applying it or not shows
        model.post_layernorm.weight.uniform_(0.5, 2.0)
        model.post_layernorm.bias.normal_()
    model.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    source = VisionTokenSource(f"hf:{tmp_path}")
    assert (source.num_patches, source.dim) == (16, 32)  # 4 x 4 patches, the CLS token dropped
    image = images()[2]
    with torch.no_grad():
        out = model(**processor(images=image, return_tensors="pt"))
        # The tower's own final norm is the one it puts on its pooled CLS token.
        torch.testing.assert_close(model.post_layernorm(out.last_hidden_state[:, 0]), out.pooler_output)
        expected = model.post_layernorm(out.last_hidden_state[:, 1:])
    torch.testing.assert_close(source.encode([image]), expected, atol=1e-5, rtol=1e-5)


def test_open_clip_vit_gives_its_output_tokens():
    source = VisionTokenSource("open_clip:mmrerank-tiny-vit")
    assert (source.num_patches, source.dim) == ((64 // 8) ** 2, 128)
    visual = source.tower
    pixels = source.pixels(images())
    before, visual.output_tokens = visual.output_tokens, True  # the tower's own tokens: after ln_post, no CLS
    try:
        with torch.no_grad():
            expected = visual(pixels)[1]
    finally:
        visual.output_tokens = before
    torch.testing.assert_close(source.patch_tokens(pixels), expected)


def test_open_clip_timm_vit_trunk_tokens_are_after_the_final_norm(tmp_path):
    from mmrerank.retrieval.clip import register_model_configs

    config = {"embed_dim": 32,
              "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                             "timm_proj": "linear", "image_size": 160},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "mmrerank-test-timm-vit.json").write_text(json.dumps(config))
    register_model_configs(str(tmp_path))
    source = VisionTokenSource("open_clip:mmrerank-test-timm-vit")
    trunk = source.tower
    assert (source.num_patches, source.dim) == ((160 // 16) ** 2, 64)
    pixels = source.pixels(images()[:2])
    with torch.no_grad():
        expected = trunk.forward_features(pixels)[:, trunk.num_prefix_tokens:]  # timm's tokens, after `norm`
        last_block = trunk.forward_intermediates(pixels, indices=1, norm=False, output_fmt="NLC",
                                                 intermediates_only=True)[-1]
    tokens = source.patch_tokens(pixels)
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(tokens, trunk.norm(last_block))
    assert not torch.allclose(tokens, last_block, atol=1e-3)  # the norm is really applied


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="feature_index"):
        VisionTokenSource("open_clip:mmrerank-tiny-vit", feature_index=2)
    with pytest.raises(ValueError, match="NaFlex"):
        VisionTokenSource("open_clip:mmrerank-tiny-resnet", keep_aspect_ratio=True)
    cnn = VisionTokenSource("open_clip:mmrerank-tiny-resnet", feature_index=2)
    tokens, padding = cnn.encode_masked(images())
    assert tokens.shape == (3, 64, 128) and not padding.any()
