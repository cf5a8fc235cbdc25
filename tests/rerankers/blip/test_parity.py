"""BLIP / BLIP-2 ITM scores against the authors' code, recorded (tests/fixtures/parity/blip*_itm_*/SOURCE.md).

- `blip_itm_hf`, `blip2_itm_hf`: the model cards' usage run under transformers 4.57.6 (`BlipProcessor` /
  `Blip2Processor` + `BlipForImageTextRetrieval` / `Blip2ForImageTextRetrieval`, softmax of the ITM logits, one pair
  at a time) on tiny checkpoints that transformers 4 saved; mmrerank loads the same folders under the installed
  transformers.
- `blip_itm_lavis`: salesforce/LAVIS's own `BlipRetrieval`, `blip_caption` / `blip_image_eval` processors and
  `compute_sim_matrix` on a tiny model whose LAVIS state dict is recorded; here it is renamed into transformers'
  layout (the key rules of transformers' `convert_blip_original_pytorch_to_hf.py`) with a config as the hub's.
- `blip2_itm_lavis`: the same for LAVIS's `Blip2Qformer` (blip2.py's `compute_sim_matrix`), renamed by the rules of
  transformers 4.46's `convert_blip_2_original_to_pytorch.py`.

Inputs: raw captions (capitals, punctuation, newlines, one over 35 word pieces and 50 words), a 1240 x 1754 page, a
23 x 17 image, a grayscale one; t2i and i2t pairs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
)

from mmrerank.rerankers.presets import load_reranker

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "parity"
BLIP_COCO, BLIP2 = "Salesforce/blip-itm-base-coco", "Salesforce/blip2-itm-vit-g"
TOLERANCE = 1e-5


def make_image(spec: dict) -> Image.Image:
    """The fixture scripts' image: 16 px blocks from a seeded generator plus a fine diagonal pattern (so the resize
    filter matters), in the spec's mode."""
    w, h = spec["width"], spec["height"]
    rng = np.random.default_rng(spec["seed"])
    blocks = rng.integers(0, 256, (-(-h // 16), -(-w // 16), 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    y, x = np.mgrid[:h, :w]
    pixels = ((blocks + ((7 * x + 13 * y) % 32)[..., None]) % 256).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(spec["mode"])


def load_cases(name: str) -> tuple[dict, list[Image.Image]]:
    cases = json.loads((FIXTURES / name / "cases.json").read_text())
    images = [make_image(spec) for spec in cases["images"]]
    assert [int(np.asarray(im).astype(np.int64).sum()) for im in images] == cases["image_sums"]
    return cases, images


def score_pairs(reranker, cases: dict, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """mmrerank's scores of the recorded pairs, each in its recorded direction, and the recorded scores."""
    queries, candidates = [], []
    for pair in cases["pairs"]:
        caption, image = cases["captions"][pair["caption"]], images[pair["image"]]
        queries.append(caption if pair["direction"] == "t2i" else image)
        candidates.append(image if pair["direction"] == "t2i" else caption)
    expected = torch.tensor([pair["score"] for pair in cases["pairs"]])
    return reranker.score(queries, candidates), expected


@pytest.mark.parametrize(("name", "preset"), [("blip_itm_hf", BLIP_COCO), ("blip2_itm_hf", BLIP2)])
def test_card_protocol_scores_as_transformers_4(name, preset):
    cases, images = load_cases(name)
    reranker = load_reranker(FIXTURES / name / "model", preset=preset, device="cpu", batch_size=48)
    got, expected = score_pairs(reranker, cases, images)
    # the torchvision backend transformers 5 picks by default moved these by up to 1.5e-3
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    assert expected.std() > 1e-2


def lavis_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LAVIS `BlipRetrieval` state dict in `BlipForImageTextRetrieval`'s names (the conversion script's rules);
    the momentum encoders, queues and temperature (training only) are dropped."""
    renames = [("visual_encoder", "vision_model.encoder"), ("blocks", "layers"), ("attn", "self_attn"),
               ("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("encoder.norm", "post_layernorm"),
               ("encoder.patch_embed.proj", "embeddings.patch_embedding"),
               ("encoder.pos_embed", "embeddings.position_embedding"),
               ("encoder.cls_token", "embeddings.class_embedding"), ("self_attn.proj", "self_attn.projection")]
    out = {}
    for key, value in state.items():
        if re.search(r"_m\.|queue|^temp$|position_ids", key):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


@pytest.fixture(scope="module")
def lavis_checkpoint(tmp_path_factory) -> Path:
    """The recorded LAVIS tiny model as a transformers checkpoint folder laid out as the hub's blip-itm-base-coco:
    `BlipVisionConfig`'s default LayerNorm eps (1e-5), a WordPiece tokenizer without [DEC] / [ENC] (the config's
    `bos_token_id` is [DEC]), a `BlipImageProcessor` (bicubic, OpenAI CLIP mean / std)."""
    folder = FIXTURES / "blip_itm_lavis"
    cases = json.loads((folder / "cases.json").read_text())
    tiny, med = cases["tiny_model"], cases["tiny_model"]["med_config"]
    vit = tiny["vit"]
    config = BlipConfig(
        text_config=dict(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                         num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
                         intermediate_size=med["intermediate_size"], encoder_hidden_size=med["encoder_width"],
                         max_position_embeddings=med["max_position_embeddings"], bos_token_id=tiny["dec_token_id"],
                         pad_token_id=0, sep_token_id=3),
        vision_config=dict(hidden_size=vit["embed_dim"], num_hidden_layers=vit["depth"],
                           num_attention_heads=vit["num_heads"], intermediate_size=int(vit["embed_dim"] * 4),
                           image_size=vit["img_size"], patch_size=vit["patch_size"], layer_norm_eps=1e-5),
        image_text_hidden_size=tiny["embed_dim"])
    model = BlipForImageTextRetrieval(config)
    missing, unexpected = model.load_state_dict(
        lavis_to_transformers(load_file(folder / "lavis_state_dict.safetensors")), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": vit["img_size"],
                                                                       "width": vit["img_size"]}),
                              tokenizer=BertTokenizer(vocab=vocab_of(folder)))
    out = tmp_path_factory.mktemp("blip-lavis")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_lavis_protocol_scores_as_lavis(lavis_checkpoint):
    cases, images = load_cases("blip_itm_lavis")
    reranker = load_reranker(lavis_checkpoint, preset=BLIP_COCO, device="cpu", protocol="lavis", batch_size=48)
    assert reranker.enc_token_id == cases["tiny_model"]["enc_token_id"]
    got, expected = score_pairs(reranker, cases, images)
    # before: 8.8e-3 (transformers 5's torchvision resize), then 9e-5 (the hub config's ViT LayerNorm eps)
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    assert expected.std() > 1e-1


def test_lavis_protocol_reads_captions_as_lavis(lavis_checkpoint):
    """LAVIS's `blip_caption` text (lower case, `. ! " ( ) * # : ; ~` dropped, 50 words) and its 35 word pieces."""
    cases, _ = load_cases("blip_itm_lavis")
    reranker = load_reranker(lavis_checkpoint, preset=BLIP_COCO, device="cpu", protocol="lavis")
    assert [reranker.render(c) for c in cases["captions"]] == cases["lavis_captions"]
    ids, mask = reranker.tokenize(cases["captions"])
    assert [row[row_mask.bool()].tolist() for row, row_mask in zip(ids, mask)] == cases["lavis_token_ids"]


def vocab_of(folder: Path) -> dict[str, int]:
    return {token: i for i, token in enumerate((folder / "vocab.txt").read_text().split())}


def lavis_blip2_to_transformers(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A LAVIS `Blip2Qformer` state dict in `Blip2ForImageTextRetrieval`'s names (the conversion script's rules):
    the EVA ViT's separate q / v biases become one qkv bias with zeros for k; the Q-Former's LM head (`Qformer.cls`)
    and `temp` are dropped."""
    state = dict(state)
    fixed = {"ln_vision": "vision_model.post_layernorm", "Qformer.bert.embeddings.LayerNorm": "qformer.layernorm",
             "Qformer.bert.embeddings.word_embeddings": "embeddings.word_embeddings",
             "Qformer.bert.embeddings.position_embeddings": "embeddings.position_embeddings",
             "visual_encoder.patch_embed.proj": "vision_model.embeddings.patch_embedding",
             "vision_proj": "vision_projection", "text_proj": "text_projection"}
    out = {"vision_model.embeddings.class_embedding": state.pop("visual_encoder.cls_token"),
           "vision_model.embeddings.position_embedding": state.pop("visual_encoder.pos_embed")}
    for i in range(layers):
        q, v = state.pop(f"visual_encoder.blocks.{i}.attn.q_bias"), state.pop(f"visual_encoder.blocks.{i}.attn.v_bias")
        out[f"vision_model.encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(v), v])
    for key, value in state.items():
        if key.startswith("Qformer.cls") or key == "temp" or key.endswith("position_ids"):
            continue
        module, _, leaf = key.rpartition(".")
        if module in fixed:
            out[f"{fixed[module]}.{leaf}"] = value
            continue
        for old, new in [("visual_encoder.blocks", "vision_model.encoder.layers"), ("norm1", "layer_norm1"),
                         ("norm2", "layer_norm2"), ("attn.proj", "self_attn.projection"),
                         ("attn.qkv", "self_attn.qkv"), ("Qformer.bert", "qformer"),
                         ("attention.self", "attention.attention")]:
            key = key.replace(old, new)
        out[key] = value
    return out


@pytest.fixture(scope="module")
def lavis_blip2_checkpoint(tmp_path_factory) -> Path:
    """The recorded LAVIS BLIP-2 tiny model as a checkpoint folder laid out as the hub's blip2-itm-vit-g (vision
    LayerNorm eps 1e-6, `Blip2VisionConfig`'s default; the tokenizer with [DEC] added; no `<image>` placeholders)."""
    folder = FIXTURES / "blip2_itm_lavis"
    cases = json.loads((folder / "cases.json").read_text())
    tiny = cases["tiny_model"]
    eva, bert = tiny["eva_vit"], tiny["bert"]
    config = Blip2Config(
        vision_config=dict(hidden_size=eva["embed_dim"], num_hidden_layers=eva["depth"],
                           num_attention_heads=eva["num_heads"], intermediate_size=int(eva["embed_dim"] * 4),
                           image_size=eva["img_size"], patch_size=eva["patch_size"], layer_norm_eps=1e-6),
        qformer_config=dict(vocab_size=bert["vocab_size"] + 1, hidden_size=bert["hidden_size"],
                            num_hidden_layers=bert["num_hidden_layers"],
                            num_attention_heads=bert["num_attention_heads"],
                            intermediate_size=bert["intermediate_size"], encoder_hidden_size=eva["embed_dim"],
                            max_position_embeddings=bert["max_position_embeddings"],
                            cross_attention_frequency=tiny["cross_attention_freq"], use_qformer_text_input=True),
        text_config=dict(model_type="opt", vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                         num_attention_heads=2, word_embed_proj_dim=16),  # the LM is not part of ITM
        num_query_tokens=tiny["num_query_token"], image_text_hidden_size=tiny["embed_dim"])
    model = Blip2ForImageTextRetrieval(config)
    state = lavis_blip2_to_transformers(load_file(folder / "lavis_state_dict.safetensors"), eva["depth"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    tokenizer = BertTokenizer(vocab=vocab_of(folder))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    size = {"height": eva["img_size"], "width": eva["img_size"]}
    out = tmp_path_factory.mktemp("blip2-lavis")
    model.save_pretrained(out)
    Blip2Processor(image_processor=BlipImageProcessor(size=size), tokenizer=tokenizer).save_pretrained(out)
    return out


def test_blip2_lavis_protocol_scores_as_lavis(lavis_blip2_checkpoint):
    cases, images = load_cases("blip2_itm_lavis")
    reranker = load_reranker(lavis_blip2_checkpoint, preset=BLIP2, device="cpu", protocol="lavis", batch_size=48)
    assert [reranker.render(c) for c in cases["captions"]] == cases["lavis_captions"]
    got, expected = score_pairs(reranker, cases, images)
    # before: 8.4e-4 (transformers 5's torchvision resize)
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)
    assert expected.std() > 1e-1
