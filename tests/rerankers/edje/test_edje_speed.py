"""EDJE training speed-ups compute the same function: the joint encoder's attention implementations, and the frozen
first-stage text tower's cached states."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig

from mmrerank.datasets.synthetic.scenes import caption_scene, sample_scene
from mmrerank.rerankers.edje.joint import JointEncoder, attention_for
from mmrerank.rerankers.edje.module import EDJEModule, EDJETraining
from mmrerank.rerankers.edje.text import FirstStageText

TOKENS = dict(cls_token_id=2, sep_token_id=3)


def _captions(count: int = 100) -> list[str]:
    """Synthetic-benchmark captions (of several lengths), deterministic."""
    rng, out = np.random.default_rng(0), []
    while len(out) < count:
        out += [text for text, _ in caption_scene(rng, sample_scene(rng), 5)]
    return out[:count]


CAPTIONS = _captions()


def joint_config() -> BertConfig:
    return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _pairs(seed: int = 0, b: int = 6, t: int = 9, m: int = 4, d: int = 32):
    """`[b, t]` ids with captions of 2..t real tokens, their mask, `[b, m, d]` image tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([2, t, 5, 7, 3, t])[:b]
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = torch.randint(5, 60, (b, t), generator=gen) * mask
    return ids, mask, torch.randn(b, m, d, generator=gen)


def _scores_and_grads(encoder: JointEncoder, ids, mask, tokens):
    encoder.zero_grad()
    tokens = tokens.clone().requires_grad_(True)
    scores = encoder(ids, mask, tokens)
    (scores * torch.linspace(-1, 1, len(scores))).sum().backward()
    return scores.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}, \
        tokens.grad


def test_eager_and_sdpa_joint_encoders_give_equal_scores_and_gradients():
    torch.manual_seed(0)
    encoder = JointEncoder(joint_config(), num_image_tokens=4, max_text_len=9, **TOKENS).train()
    ids, mask, tokens = _pairs()
    results = {}
    for impl in ("eager", "sdpa"):
        encoder.attn_implementation = impl
        results[impl] = _scores_and_grads(encoder, ids, mask, tokens)
        assert encoder.bert.config._attn_implementation == impl
    (s_eager, g_eager, t_eager), (s_sdpa, g_sdpa, t_sdpa) = results["eager"], results["sdpa"]
    torch.testing.assert_close(s_eager, s_sdpa, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t_eager, t_sdpa, rtol=1e-5, atol=1e-5)
    assert g_eager.keys() == g_sdpa.keys() and len(g_eager) > 10
    for name in g_eager:
        torch.testing.assert_close(g_eager[name], g_sdpa[name], rtol=1e-5, atol=1e-5, msg=name)
    assert s_eager.std() > 1e-3  # the scores are not all one value (which any two paths would agree on)


def test_auto_attention_is_eager_on_cpu_under_bf16_and_sdpa_in_float32():
    cpu = torch.device("cpu")
    assert attention_for("auto", cpu) == "sdpa"
    with torch.autocast("cpu", torch.bfloat16):
        assert attention_for("auto", cpu) == "eager"
        assert attention_for("sdpa", cpu) == "sdpa"
    assert attention_for("auto", cpu, torch.bfloat16) == "eager"
    torch.manual_seed(0)
    encoder = JointEncoder(joint_config(), num_image_tokens=4, max_text_len=9, **TOKENS)
    ids, mask, tokens = _pairs()
    with torch.autocast("cpu", torch.bfloat16):
        encoder(ids, mask, tokens)
    assert encoder.bert.config._attn_implementation == "eager"
    encoder(ids, mask, tokens)
    assert encoder.bert.config._attn_implementation == "sdpa"


def test_attention_names_are_checked_before_building():
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        JointEncoder(joint_config(), num_image_tokens=4, attn_implementation="fast")
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        EDJEModule(training=EDJETraining(attn_implementation="flash"))


@pytest.fixture(scope="module")
def side():
    torch.manual_seed(0)
    return FirstStageText("mmrerank-tiny-resnet", 32).train()


def _reference(side: FirstStageText, texts: list[str]) -> torch.Tensor:
    """The tower as before the cache: one padded batch, cut to its longest caption -> `[B, T, w]`, zero-padded."""
    ids, mask = side.tokenize(texts)
    t = ids.shape[1]
    with torch.no_grad():
        x = side.token_embedding(ids) + side.positional_embedding[:t]
        x = side.ln_final(side.transformer(x, attn_mask=side.causal_mask[:t, :t]))
    return x * mask[..., None]


@pytest.mark.parametrize("bf16", [False, True])
def test_cached_text_states_equal_recomputed_ones_exactly(side, bf16):
    """Captions met before come from the cache; a copy without a cache recomputes them in another batch (other
    companions, other rows, other padded length): the states are equal bit for bit, also under bf16 autocast (the
    tower runs in float32), and the projected outputs too."""
    cached, fresh = copy.deepcopy(side), copy.deepcopy(side)
    fresh.cache_states = False
    first, second = CAPTIONS[:40], CAPTIONS[25:31] + CAPTIONS[60:100] + CAPTIONS[3:4]  # 7 met before, 40 new
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        cached(*cached.tokenize(first))
        calls = []
        original = cached._tower_blocks
        cached._tower_blocks = lambda ids, lengths: calls.append(len(ids)) or original(ids, lengths)
        ids, mask = cached.tokenize(second)
        out, expected = cached(ids, mask), fresh(ids, mask)
        lengths = mask.sum(1)
        states = cached.frozen_states(ids, lengths)
        recomputed = fresh.frozen_states(ids, lengths)
    assert calls[0] == 40  # only the new captions ran through the tower
    assert torch.equal(states, recomputed)
    assert torch.equal(out * mask[..., None], expected * mask[..., None])
    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    # the same function as the tower before the cache (block shapes change float32 rounding only)
    torch.testing.assert_close(states, _reference(side, second), rtol=1e-5, atol=1e-5)


def test_text_cache_never_answers_for_other_weights_or_mode(side):
    """Loading other tower weights into the module (same objects, edited in place) or switching to eval mode gives a
    new cache: the states are those of the weights in use."""
    model = copy.deepcopy(side)
    texts = CAPTIONS[:12]
    ids, mask = model.tokenize(texts)
    before = model.frozen_states(ids, mask.sum(1))
    torch.manual_seed(5)
    other = FirstStageText("mmrerank-tiny-resnet", 32).train()
    model.load_state_dict(other.state_dict())
    after = model.frozen_states(ids, mask.sum(1))
    torch.testing.assert_close(after, _reference(other, texts), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)
    assert len(model._cache) == 2
    model.eval()
    model.frozen_states(ids, mask.sum(1))
    assert len(model._cache) == 3


def test_trainable_tower_is_not_cached(side):
    model = copy.deepcopy(side)
    model.trainable = True
    for p in model.tower_parameters():
        p.requires_grad_(True)
    ids, mask = model.tokenize(CAPTIONS[:8])
    model(ids, mask).sum().backward()
    assert model._cache == {} and model.token_embedding.weight.grad is not None


def test_length_buckets_give_the_same_scores_and_gradients():
    """Pairs scored in groups of similar caption length, each cut to its longest caption, in the input order."""
    torch.manual_seed(0)
    encoder = JointEncoder(joint_config(), num_image_tokens=4, max_text_len=9, **TOKENS).train()
    ids, mask, tokens = _pairs()
    whole = _scores_and_grads(encoder, ids, mask, tokens)
    encoder.length_buckets = 3
    calls = []
    hook = encoder.bert.register_forward_pre_hook(lambda _, args, kw: calls.append(kw["inputs_embeds"].shape[1]),
                                                  with_kwargs=True)
    bucketed = _scores_and_grads(encoder, ids, mask, tokens)
    hook.remove()
    # lengths 2, 3 | 5, 7 | 9, 9: each group cut to its own longest caption, + [CLS] [SEP] 4 image tokens [SEP]
    assert calls == [3 + 7, 7 + 7, 9 + 7]
    torch.testing.assert_close(bucketed[0], whole[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bucketed[2], whole[2], rtol=1e-5, atol=1e-5)
    for name in whole[1]:
        torch.testing.assert_close(bucketed[1][name], whole[1][name], rtol=1e-5, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="length_buckets must be >= 1"):
        EDJEModule(training=EDJETraining(length_buckets=0))


def test_text_cache_is_bounded(side):
    model = copy.deepcopy(side)
    ids, mask = model.tokenize(CAPTIONS[:10])
    model.frozen_states(ids, mask.sum(1))
    per_caption = model._cache_bytes / 10
    model.max_cache_bytes = int(15 * per_caption)
    ids, mask = model.tokenize(CAPTIONS[10:20])
    model.frozen_states(ids, mask.sum(1))  # 20 would not fit: the cache starts afresh with these 10
    assert sum(len(c) for c in model._cache.values()) == 10
    assert model._cache_bytes <= model.max_cache_bytes
