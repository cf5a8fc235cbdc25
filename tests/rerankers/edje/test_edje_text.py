"""EDJE text sides (own word pieces, the first stage's text tower, a pretrained BERT folder); twin negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertModel, BertTokenizerFast

from mmrerank.datasets.synthetic import ensure_split, load_scenes, load_synthetic
from mmrerank.datasets.synthetic.scenes import satisfies, scene_arrays
from mmrerank.losses import listwise_softmax
from mmrerank.optim import adamw_warmup_cosine
from mmrerank.rerankers.edje import EDJE, EDJEConfig, build_wordpiece_tokenizer
from mmrerank.rerankers.edje.data import RerankGroups
from mmrerank.rerankers.edje.joint import SPECIAL_TOKENS
from mmrerank.rerankers.edje.text import FirstStageText
from mmrerank.retrieval.clip import CLIPEncoder
from mmrerank.retrieval.negatives import mine_hard_negatives

TEXTS = ["a red circle left of a blue square", "a green star above a box", "a small yellow triangle"]
JOINT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """A first-stage checkpoint with non-default weights (so loading it is visible)."""
    torch.manual_seed(0)
    encoder = CLIPEncoder("mmrerank-tiny-resnet")
    path = tmp_path_factory.mktemp("fs") / "fs"
    encoder.save_pretrained(path)
    return path


def test_first_stage_text_states_are_open_clips(first_stage):
    """The tower's states at end-of-text, through open_clip's text projection, are open_clip's own `encode_text`."""
    encoder = CLIPEncoder("mmrerank-tiny-resnet")
    encoder.load_weights(first_stage)
    side = FirstStageText("mmrerank-tiny-resnet", 32, checkpoint=str(first_stage)).eval()
    side.project = nn.Identity()
    ids, mask = side.tokenize(TEXTS + [""])
    assert ids.shape[1] == int(mask.sum(1).max()) and mask[-1].tolist()[:3] == [1, 1, 0]  # "" is SOT, EOT
    with torch.no_grad():
        states = side(ids, mask)  # [B, T, width]
        eot = states[torch.arange(len(ids)), mask.sum(1) - 1]
        expected = encoder.model.encode_text(encoder.tokenizer(TEXTS + [""]))
    torch.testing.assert_close(eot @ encoder.model.text_projection, expected, atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in side.tower_parameters())


def build(text: str, first_stage, bert_folder) -> EDJE:
    """A tiny EDJE with the named text side."""
    joint = dict(JOINT)
    kwargs = {}
    if text == "bert":
        tokenizer = BertTokenizerFast.from_pretrained(str(bert_folder))
        joint = {"name": str(bert_folder)}
    elif text == "words":
        tokenizer = build_wordpiece_tokenizer(TEXTS * 3, vocab_size=120)
    else:
        tokenizer = build_wordpiece_tokenizer([], vocab_size=len(SPECIAL_TOKENS))
        kwargs = {"text": "first_stage:mmrerank-tiny-resnet", "text_checkpoint": str(first_stage),
                  "text_trainable": text == "first_stage (fine-tuned)"}
    config = EDJEConfig(vision="open_clip:mmrerank-tiny-resnet", patch_dim=24, num_patches=9, num_image_tokens=4,
                        adapter_heads=2, adapter_mlp_ratio=2, joint=joint, max_text_len=12, **kwargs)
    return EDJE(config, tokenizer)


SIDES = ["words", "first_stage", "first_stage (fine-tuned)", "bert"]


@pytest.mark.parametrize("text", SIDES)
def test_each_text_side_trains_saves_and_loads_to_the_same_scores(text, first_stage, bert_folder, tmp_path):
    torch.manual_seed(1)
    model = build(text, first_stage, bert_folder).train()
    patches = torch.randn(3, 4, 9, 24)  # [query, candidate, P, D]; candidate 0 is the positive
    ids, mask = model.joint.tokenize([t for t in TEXTS for _ in range(4)])
    tower = model.joint.text.tower_parameters() if model.joint.text is not None else []
    before = [p.detach().clone() for p in tower]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        scores = model(ids, mask, model.compress(patches.flatten(0, 1))).view(3, 4)
        loss = listwise_softmax(scores, torch.tensor([[1.0, 0, 0, 0]] * 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    moved = [not torch.equal(a, p) for a, p in zip(before, tower)]
    assert all(moved) if text == "first_stage (fine-tuned)" else not any(moved)  # frozen stays frozen

    model.eval()
    with torch.no_grad():
        expected = model.score(TEXTS, model.compress(patches[:, 0]))
    model.save_pretrained(tmp_path / "edje")
    again = EDJE.from_pretrained(tmp_path / "edje")
    with torch.no_grad():
        torch.testing.assert_close(again.score(TEXTS, again.compress(patches[:, 0])), expected, rtol=0, atol=0)
    saved = json.loads((tmp_path / "edje" / "config.json").read_text())
    assert saved["text"] == model.config.text


def test_pretrained_bert_keeps_its_position_table_through_save_and_load(first_stage, bert_folder, tmp_path):
    """Regression: a pretrained encoder's 512-row table was rebuilt at max_text_len + m + 3 rows on load."""
    model = build("bert", first_stage, bert_folder)
    assert model.joint.bert.embeddings.position_embeddings.num_embeddings == 512
    model.save_pretrained(tmp_path / "edje")
    again = EDJE.from_pretrained(tmp_path / "edje")
    assert again.joint.bert.embeddings.position_embeddings.num_embeddings == 512
    pretrained = BertModel.from_pretrained(str(bert_folder))
    torch.testing.assert_close(again.joint.bert.embeddings.word_embeddings.weight,
                               pretrained.embeddings.word_embeddings.weight)


def test_text_side_names_are_checked():
    with pytest.raises(ValueError, match="first_stage:<open_clip model>"):
        EDJEConfig(vision="timm:none", patch_dim=4, num_patches=4, text="clip")


def test_a_slower_tower_gets_its_own_learning_rate(first_stage):
    model = build("first_stage (fine-tuned)", first_stage, None)
    tower = {id(p) for p in model.joint.text.tower_parameters()}
    optimizer = adamw_warmup_cosine(model, 1e-3, 0.01, 10, 100, lr_scale=lambda p: 0.1 if id(p) in tower else 1.0)
    optimizer = optimizer["optimizer"]
    lrs = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}  # before the warm-up factor
    assert {round(lrs[i], 12) for i in tower} == {1e-4}
    assert {round(lr, 12) for i, lr in lrs.items() if i not in tower} == {1e-3}
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())


# --- twin negatives --------------------------------------------------------------------------------------------------

def test_twin_negatives_are_the_near_duplicate_and_never_relevant(tiny_config):
    data = load_synthetic("train", tiny_config, progress=False)
    folder = ensure_split(tiny_config, "train", progress=False)
    scenes = load_scenes(folder)
    attrs, rels = scene_arrays(scenes)
    relevant = satisfies(np.load(folder / "specs.npy"), attrs, rels)  # the full matrix, from the scene graph
    relevant[np.arange(len(data.captions)), data.caption_image.numpy()] = True
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(len(data.images) + len(data.captions), 8), dim=-1)
    negatives = mine_hard_negatives(data, emb[:len(data.images)], emb[len(data.images):], k=8, depth=16)
    groups = RerankGroups(data, negatives, n=4, hard=2, pool=8, twins=True)
    twin_images = twin_captions = 0
    for c in range(len(data.captions)):
        item = groups[c]
        image = int(data.caption_image[c])
        twin = image ^ 1
        assert scenes[twin] != scenes[image]  # the pair really is a minimal pair, not a copy
        images, captions = item["t2i_images"][1:].tolist(), item["i2t_captions"][1:].tolist()
        assert not any(relevant[c, i] for i in images) and not any(relevant[x, image] for x in captions)
        assert len(set(images)) == len(images) == 4 and len(set(captions)) == 4
        if not relevant[c, twin]:
            assert images[0] == twin
            twin_images += 1
        if int(data.caption_image[captions[0]]) == twin:
            twin_captions += 1
        else:  # only when every caption of the twin also fits this image
            assert all(relevant[x, image] for x in np.nonzero(data.caption_image.numpy() == twin)[0])
    assert twin_images > len(data.captions) // 2 and twin_captions > len(data.captions) // 2
    groups.use_hard(False)  # the curriculum's random phase has no twins either
    assert sum(groups[c]["t2i_images"][1].item() == int(data.caption_image[c]) ^ 1
               for c in range(len(data.captions))) < len(data.captions) // 4


def test_near_duplicates_follow_a_subset(tiny_config):
    data = load_synthetic("val", tiny_config, progress=False)
    sub = data.subset_images([3, 2, 5])  # 2 and 3 are twins; 5's twin 4 is left out
    assert sub.near_duplicates.tolist() == [1, 0, -1]
    with pytest.raises(ValueError, match="no near-duplicate twins.*--data.twins=false"):
        RerankGroups(sub.__class__(sub.name, sub.images, sub.captions, sub.caption_image), None, twins=True)
