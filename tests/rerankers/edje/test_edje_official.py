"""The released EDJE checkpoint (`shahafw/edje-vl-image-retrieval-reranker`) loads and scores as the authors' code.

A tiny model in the authors' format stands in for the release (`edje_official_tiny.py`): a SigLIP dual model and a
MiniLM-like BERT saved as their hub repositories are (the BERT with only `config.json`, weights and `vocab.txt`), and
a seeded state dict of the authors' `MultimodalPretrainModel` layout saved as `train.py` saves it. The
reference forward below is written from their code (github.com/shahafwa/EDJE at commit 56c0c23:
`pretrain_model.py` `compute_logits` / `tokenize_text_image_pair` / `compute_inputs_embeds`,
`token_compression.py`, `evaluation/evaluate_retrieval.py`), with plain tensor operations for the adapter and
transformers' `BertForMaskedLM` for the language model, as they use it; nothing of mmrerank's EDJE modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from edje_official_tiny import HEADS, MLP, WIDTH, M, authors_state_dict, build_minilm, build_siglip, save_release
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    SiglipConfig,
    SiglipModel,
)

from mmrerank.rerankers.edje import EDJE
from mmrerank.rerankers.edje.adapter import OfficialCompressionAdapter
from mmrerank.rerankers.edje.official import OFFICIAL, PRESETS, convert_official, official_config
from mmrerank.rerankers.presets import PresetRows, load_reranker, presets

LONG = " ".join(["the big red dog runs on the green grass near a small house"] * 6)  # > 61 word pieces
CAPTIONS = ["a red dog", "two dogs run on the green grass near a small house", "a cat under the big blue sky",
            LONG, ""]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The two hub folders the release builds on (tiny) and the authors' state dict over them."""
    root = tmp_path_factory.mktemp("edje_official")
    minilm, siglip = build_minilm(root / "minilm"), build_siglip(root / "siglip")
    return minilm, siglip, authors_state_dict(minilm, siglip)


# --- the authors' forward, written from their code --------------------------------------------------------------

def authors_adapter(state, patches: torch.Tensor) -> torch.Tensor:
    """token_compression.py: MHA(query, key(x), value(x)); x = a + mlp(layernorm(a)); projection(x)."""
    p = {k[len("vision_projection."):]: v for k, v in state.items() if k.startswith("vision_projection.")}
    b = patches.shape[0]
    query = p["query"].expand(b, -1, -1)
    key = patches @ p["key.weight"].T + p["key.bias"]
    value = patches @ p["value.weight"].T + p["value.bias"]
    wq, wk, wv = p["attention.in_proj_weight"].chunk(3)
    bq, bk, bv = p["attention.in_proj_bias"].chunk(3)

    def heads(x):  # [B, n, D] -> [B, h, n, D / h]
        return x.view(b, x.shape[1], HEADS, WIDTH // HEADS).transpose(1, 2)

    q, k, v = heads(query @ wq.T + bq), heads(key @ wk.T + bk), heads(value @ wv.T + bv)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(b, M, WIDTH)
    attended = attended @ p["attention.out_proj.weight"].T + p["attention.out_proj.bias"]
    normed = F.layer_norm(attended, (WIDTH,), p["layernorm.weight"], p["layernorm.bias"], eps=1e-6)  # SigLIP's eps
    hidden = F.gelu(normed @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"])  # MiniLM's hidden_act: gelu
    x = attended + hidden @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    return x @ p["projection.weight"].T + p["projection.bias"]


def authors_pair(tokenizer, captions):
    """tokenize_text_image_pair: (caption, "<image>" * m), truncation="only_first", max_length = 64 + m."""
    return tokenizer(list(captions), ["<image>" * M] * len(captions), padding=True, truncation="only_first",
                     max_length=64 + M, return_tensors="pt")


def authors_scores(state, minilm, siglip, captions, images) -> torch.Tensor:
    """compute_logits on images, as their evaluation feeds them (SigLIP's vision_model.last_hidden_state)."""
    processor = AutoImageProcessor.from_pretrained(siglip, backend="pil")  # transformers 4.x's default, theirs
    tower = SiglipModel.from_pretrained(siglip).vision_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm, extra_special_tokens={"image_token": "<image>"})
    config = BertConfig.from_pretrained(minilm, vocab_size=len(tokenizer), max_position_embeddings=64 + M)
    lm = BertForMaskedLM(config).eval()
    lm.load_state_dict({k[len("language_model."):]: v for k, v in state.items() if k.startswith("language_model.")})
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = authors_adapter(state, tower(pixel_values=pixels).last_hidden_state)
        pair = authors_pair(tokenizer, captions)
        embeds = lm.get_input_embeddings()(pair["input_ids"])
        slots = (pair["input_ids"] == tokenizer.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, tokens)
        hidden = lm(inputs_embeds=embeds, attention_mask=pair["attention_mask"],
                    token_type_ids=pair["token_type_ids"], output_hidden_states=True).hidden_states[-1]
        pooled = torch.tanh(hidden[:, 0] @ state["classification_head.0.dense.weight"].T
                            + state["classification_head.0.dense.bias"])
        return (pooled @ state["classification_head.1.weight"].T + state["classification_head.1.bias"]).view(-1)


def images(n: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(7)
    sizes = [(40, 30), (32, 32), (50, 64), (33, 47), (64, 20)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8).numpy())
            for w, h in (sizes * n)[:n]]


def load(folder, minilm, siglip):
    return load_reranker(folder, preset=OFFICIAL, language_model=str(minilm), vision=f"hf:{siglip}", device="cpu")


# --- tests --------------------------------------------------------------------------------------------------------

def test_preset_is_registered():
    preset = presets()[OFFICIAL]
    assert preset is PRESETS[OFFICIAL] and preset.family == "edje" and preset.tasks == ("t2i", "i2t")
    assert preset.options["vision"] == "hf:google/siglip2-large-patch16-384"  # the card's vision encoder
    assert PresetRows(name=OFFICIAL).name == OFFICIAL  # a benchmark config can name it (unknown names raise)


def test_release_shapes_give_the_cards_figures(tmp_path):
    """At the release's shapes (the hub configs of MiniLM-L12-H384 and SigLIP2 ViT-L/16-384, a state dict of its
    tensor shapes): 64 tokens from 576 patches, 16 heads, MLP 8192, and the card's "~49 kB per image"."""
    BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536,
               max_position_embeddings=512).save_pretrained(tmp_path / "minilm")
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=384, patch_size=16)
    SiglipConfig(vision_config=vision).save_pretrained(tmp_path / "siglip")
    shapes = {"vision_projection.query": (1, 64, 1024), "vision_projection.mlp.fc1.weight": (8192, 1024),
              "language_model.bert.embeddings.word_embeddings.weight": (30523, 384),
              "language_model.bert.embeddings.position_embeddings.weight": (512, 384)}
    shapes |= {f"language_model.bert.encoder.layer.{i}.intermediate.dense.weight": (1536, 384) for i in range(12)}
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    config = official_config(state, "release", str(tmp_path / "minilm"), f"hf:{tmp_path / 'siglip'}", 30523)
    assert (config.num_patches, config.num_image_tokens, config.adapter_heads) == (576, 64, 16)
    assert (config.adapter_mlp_ratio * config.patch_dim, config.adapter_eps, config.max_text_len) == (8192, 1e-6, 61)
    assert config.num_image_tokens * config.joint["hidden_size"] * 2 == 49_152  # bytes per image, 16-bit tokens


def test_adapter_has_the_authors_parameter_names():
    adapter = OfficialCompressionAdapter(in_dim=WIDTH, num_queries=M, out_dim=32, num_heads=HEADS, mlp_dim=MLP)
    # token_compression.py: query, key, value, attention (nn.MultiheadAttention), layernorm, mlp.fc1/fc2, projection
    names = {"query", "attention.in_proj_weight", "attention.in_proj_bias"}
    names |= {f"{m}.{p}" for m in ("key", "value", "attention.out_proj", "layernorm", "mlp.fc1", "mlp.fc2",
                                   "projection") for p in ("weight", "bias")}
    assert set(adapter.state_dict()) == names
    assert adapter.state_dict()["query"].shape == (1, M, WIDTH)


@pytest.mark.parametrize("kind", ["pth", "legacy-pth", "safetensors"])
def test_scores_equal_the_authors_forward(parts, tmp_path, kind):
    minilm, siglip, state = parts
    reranker = load(save_release(state, tmp_path / "release", kind), minilm, siglip)
    pictures = images(len(CAPTIONS))
    expected = authors_scores(state, minilm, siglip, CAPTIONS, pictures)
    assert expected.std() > 1e-2  # the pairs score differently, so the comparison can tell layouts apart
    torch.testing.assert_close(reranker.score(CAPTIONS, pictures), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(reranker.score(pictures, CAPTIONS), expected, atol=1e-4, rtol=0)  # i2t: same pairs
    # The compressed tokens (what a token store keeps) are the authors' adapter outputs.
    processor = AutoImageProcessor.from_pretrained(siglip, backend="pil")
    tower = SiglipModel.from_pretrained(siglip).vision_model.eval()
    with torch.no_grad():
        patches = tower(pixel_values=processor(images=pictures, return_tensors="pt")["pixel_values"]).last_hidden_state
        torch.testing.assert_close(reranker.model.compress(patches), authors_adapter(state, patches), atol=1e-5,
                                   rtol=0)


def test_batch_scores_equal_one_by_one(parts, tmp_path):
    minilm, siglip, state = parts
    reranker = load(save_release(state, tmp_path / "release", "pth"), minilm, siglip)
    pictures = images(len(CAPTIONS))
    batch = reranker.score(CAPTIONS, pictures)  # captions of mixed lengths, padded to the longest
    alone = torch.cat([reranker.score([c], [p]) for c, p in zip(CAPTIONS, pictures)])
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=0)


def test_pair_input_is_the_authors(parts, tmp_path):
    """The joint encoder's input equals the authors' tokenised pair with `<image>` embeddings replaced
    (pretrain_model.py tokenize_text_image_pair / compute_inputs_embeds), real token by real token."""
    minilm, siglip, state = parts
    model = load(save_release(state, tmp_path / "release", "pth"), minilm, siglip).model
    tokenizer = AutoTokenizer.from_pretrained(minilm, extra_special_tokens={"image_token": "<image>"})
    pair = authors_pair(tokenizer, CAPTIONS)
    # The rendered pair for a short caption: [CLS] caption [SEP] <image> x m [SEP].
    assert tokenizer.convert_ids_to_tokens(pair["input_ids"][0][pair["attention_mask"][0].bool()]) == \
        ["[CLS]", "a", "red", "dog", "[SEP]", *["<image>"] * M, "[SEP]"]
    tokens = torch.randn(len(CAPTIONS), M, model.dim)
    ids, mask = model.joint.tokenize(CAPTIONS)
    embeds, attention, types, positions = model.joint.build_inputs(ids, mask, tokens)
    word = model.joint.bert.embeddings.word_embeddings
    for i in range(len(CAPTIONS)):
        real = attention[i].bool()
        theirs = pair["input_ids"][i][pair["attention_mask"][i].bool()]
        mine = torch.cat([torch.tensor([tokenizer.cls_token_id]), ids[i][mask[i].bool()],
                          torch.tensor([tokenizer.sep_token_id]), torch.full((M,), tokenizer.image_token_id),
                          torch.tensor([tokenizer.sep_token_id])])
        assert mine.tolist() == theirs.tolist()  # the long caption is cut to the same 61 word pieces
        assert types[i][real].tolist() == pair["token_type_ids"][i][pair["attention_mask"][i].bool()].tolist()
        assert positions[i][real].tolist() == list(range(len(theirs)))  # default positions of right padding
        expected = word(theirs).masked_scatter((theirs == tokenizer.image_token_id)[:, None].expand(-1, model.dim),
                                               tokens[i])
        torch.testing.assert_close(embeds[i][real], expected, atol=0, rtol=0)
    assert len(model.joint.tokenize([LONG])[0][0]) == 61


def test_converted_folder_reloads(parts, tmp_path):
    minilm, siglip, state = parts
    release = save_release(state, tmp_path / "release", "safetensors")
    convert_official(release, tmp_path / "converted", language_model=str(minilm), vision=f"hf:{siglip}")
    config = EDJE.from_pretrained(tmp_path / "converted").config
    assert (config.adapter, config.caption_cleaning) == ("official", "open_clip")
    again = load_reranker(tmp_path / "converted", preset=OFFICIAL, device="cpu")  # read as saved: no conversion
    pictures = images(len(CAPTIONS))
    torch.testing.assert_close(again.score(CAPTIONS, pictures), load(release, minilm, siglip).score(CAPTIONS, pictures),
                               atol=1e-6, rtol=0)


def test_loads_by_hub_id(parts, tmp_path, monkeypatch):
    """`load_reranker(<hub id>)`, the user's path: the repository's files are listed, its weight file fetched."""
    import huggingface_hub

    minilm, siglip, state = parts
    release = save_release(state, tmp_path / "release", "safetensors")
    (release / "README.md").write_text("model card")
    fetched = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: ["README.md", "model.safetensors"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: fetched.append((repo, name)) or str(release / name))
    reranker = load_reranker(OFFICIAL, language_model=str(minilm), vision=f"hf:{siglip}", device="cpu")
    assert fetched == [(OFFICIAL, "model.safetensors")]
    pictures = images(2)
    torch.testing.assert_close(reranker.score(CAPTIONS[:2], pictures),
                               authors_scores(state, minilm, siglip, CAPTIONS[:2], pictures), atol=1e-4, rtol=0)


class _Pickled:  # an object whose unpickling would run this module's code
    pass


def test_other_files_fail_loudly(parts, tmp_path):
    minilm, siglip, state = parts
    kwargs = dict(language_model=str(minilm), vision=f"hf:{siglip}")
    teacher = {k: v for k, v in state.items() if not k.startswith("vision_projection.")}
    teacher |= {"vision_projection.0.weight": torch.zeros(MLP, WIDTH),
                "vision_projection.2.weight": torch.zeros(32, MLP)}
    with pytest.raises(ValueError, match="uncompressed"):
        convert_official(save_release(teacher, tmp_path / "teacher", "safetensors"), **kwargs)
    torch.save({"model": _Pickled()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="weights_only"):
        convert_official(tmp_path / "code.pth", **kwargs)
    other = tmp_path / "other_bert"  # a language model whose vocabulary is not the file's
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    BertForMaskedLM(BertConfig(vocab_size=6, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(other)
    with pytest.raises(ValueError, match="rows"):
        convert_official(save_release(state, tmp_path / "release", "safetensors"), language_model=str(other),
                         vision=f"hf:{siglip}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight file"):
        convert_official(tmp_path / "empty", **kwargs)


def test_a_folder_converted_before_caption_cleaning_was_recorded_cleans(parts, tmp_path):
    """Folders that `convert_official` wrote before `caption_cleaning` existed hold the authors' model too."""
    import json

    minilm, siglip, state = parts
    convert_official(save_release(state, tmp_path / "release", "safetensors"), tmp_path / "converted",
                     language_model=str(minilm), vision=f"hf:{siglip}")
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    del config["caption_cleaning"]
    (tmp_path / "converted" / "config.json").write_text(json.dumps(config))
    reranker = load_reranker(tmp_path / "converted", preset=OFFICIAL, device="cpu")
    assert reranker.model.config.caption_cleaning == "open_clip"
    pictures = images(2)
    torch.testing.assert_close(reranker.score(["A RED dog!", "a  cat"], pictures),
                               reranker.score(["a red dog", "a cat"], pictures), atol=0, rtol=0)
