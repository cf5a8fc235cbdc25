"""BLIP / BLIP-2 ITM rerankers on tiny models in the real format, loaded the way a download is.

Each tiny model is the real transformers class (`BlipForImageTextRetrieval`, `Blip2ForImageTextRetrieval`) from the
real config class, scaled down with random weights, saved with `save_pretrained` beside a real `BlipProcessor` /
`Blip2Processor` (a bert-style WordPiece `BertTokenizer` built here, a `BlipImageProcessor` at 32 px), and loaded
through `load_reranker(folder, preset=<hub id>)`. Expectations are the model's own forward on the processor's
output (the card's usage) or the LAVIS formula written out here.

Sources read: transformers 5.24 `models/blip/modeling_blip.py` and `models/blip_2/modeling_blip_2.py` (the installed
package); transformers `models/blip/convert_blip_original_pytorch_to_hf.py` at 0985bddc (it checks
`softmax(itm_score, dim=1)[:, 1]`); salesforce/LAVIS at 506965b9 `lavis/models/albef_models/__init__.py`
(`compute_sim_matrix`: `text_ids[:, 0] = enc_token_id`, `score = itm_head(...)[:, 1] + topk_sim`),
`lavis/models/blip2_models/blip2.py` and `blip2_qformer.py` (`compute_itm`: `itm_logit[:, :, 1].mean(dim=1)`),
`lavis/processors/blip_processors.py` (`pre_caption`).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipImageProcessorPil,
    BlipProcessor,
)

from mmrerank.core.items import ImageArray, RetrievalTask, Texts
from mmrerank.core.run import Qrels, Run
from mmrerank.rerankers.blip import Blip2ITMReranker, BlipITMReranker, pre_caption
from mmrerank.rerankers.edje.joint import build_wordpiece_tokenizer
from mmrerank.rerankers.mllm import Page
from mmrerank.rerankers.presets import load_reranker

# The transformers docstring example of BlipForImageTextRetrieval.forward (modeling_blip.py, 5.24) and the
# caption of its conversion check (convert_blip_original_pytorch_to_hf.py); the others mix lengths.
CAPTIONS = ["an image of a cat", "A picture of a woman with a dog sitting in a beach", "two dogs",
            "a red bike leaning on a green wall near the old city road", "cat"]
BLIP_COCO, BLIP_FLICKR, BLIP2 = "Salesforce/blip-itm-base-coco", "Salesforce/blip-itm-base-flickr", \
    "Salesforce/blip2-itm-vit-g"
WIDTH, IMAGE_PX, PATCH = 32, 32, 8


def bert_tokenizer() -> BertTokenizer:
    """A bert-base-uncased-style WordPiece tokenizer over the test captions ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3)."""
    vocab = build_wordpiece_tokenizer(CAPTIONS, vocab_size=120).get_vocab()
    return BertTokenizer(vocab=vocab)


def image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": IMAGE_PX, "width": IMAGE_PX})


def pil_pixels(imgs) -> torch.Tensor:
    """`image_processor()`'s pixels as transformers 4 and LAVIS make them (PIL's bicubic resize), `[N, 3, H, W]`."""
    pil = BlipImageProcessorPil(size={"height": IMAGE_PX, "width": IMAGE_PX})
    return pil(imgs, return_tensors="pt")["pixel_values"]


def vision_config() -> dict:
    return dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                image_size=IMAGE_PX, patch_size=PATCH)


def spread_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights wide enough that pairs score visibly apart (the 0.02 init makes every pair score alike)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "LayerNorm" in name or "layernorm" in name:
                continue  # keep LayerNorm at identity: random gains shrink the signal layer after layer
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """`n` random RGB images of different sizes (the processor resizes them)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 44 - 3 * i, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """A tiny BLIP ITM checkpoint folder (config, weights, processor), its model and processor, and [ENC]'s id.

    As on the hub, the tokenizer knows neither [DEC] nor [ENC]: the text vocabulary is the tokenizer's plus two,
    `bos_token_id` is [DEC] (LAVIS's init_tokenizer adds [DEC] then [ENC] to bert-base-uncased: 30522, 30523).
    """
    tokenizer = bert_tokenizer()
    n = len(tokenizer)
    config = BlipConfig(text_config=dict(vocab_size=n + 2, hidden_size=WIDTH, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64, encoder_hidden_size=WIDTH,
                                         max_position_embeddings=64, bos_token_id=n, pad_token_id=0, sep_token_id=3),
                        vision_config=vision_config(), image_text_hidden_size=16)
    model = spread_weights(BlipForImageTextRetrieval(config), seed=1)
    processor = BlipProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp("blip-itm")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor, n + 1


def blip2_checkpoint(folder, placeholders: bool):
    """A tiny BLIP-2 ITM checkpoint: with `placeholders`, the newer upload layout (`image_token_index` in the config,
    `num_query_tokens` in the processor, which prepends `<image>` x Q to the caption); without, the older one."""
    tokenizer = bert_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # the hub upload's added_tokens.json: {"[DEC]": 30522}
    processor = Blip2Processor(image_processor=image_processor(), tokenizer=tokenizer,
                               num_query_tokens=4 if placeholders else None)
    config = Blip2Config(
        vision_config=vision_config(),
        qformer_config=dict(vocab_size=len(tokenizer), hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, encoder_hidden_size=WIDTH, max_position_embeddings=64,
                            cross_attention_frequency=1, use_qformer_text_input=True),
        text_config=dict(model_type="opt", vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                         num_attention_heads=2, word_embed_proj_dim=16),
        num_query_tokens=4, image_text_hidden_size=16,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>") if placeholders else None)
    model = spread_weights(Blip2ForImageTextRetrieval(config), seed=2)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module", params=[True, False], ids=["placeholders", "no-placeholders"])
def blip2(request, tmp_path_factory):
    return blip2_checkpoint(tmp_path_factory.mktemp("blip2-itm"), request.param)


def card_inputs(processor, texts, imgs):
    """The card's usage: `processor(images=..., text=..., return_tensors="pt")`, padded to the longest caption, with
    the pixels of transformers 4's processor (PIL's resize; transformers 5 defaults to torchvision's)."""
    inputs = processor(images=imgs, text=texts, return_tensors="pt", padding=True)
    inputs["pixel_values"] = pil_pixels(imgs)
    return inputs


# --- BLIP --------------------------------------------------------------------------------------------------------


def test_blip_scores_equal_the_models_own_forward(blip):
    folder, model, processor, _ = blip
    reranker = load_reranker(folder, preset=BLIP_COCO, device="cpu")
    imgs = images(len(CAPTIONS))
    with torch.no_grad():
        logits = model(**card_inputs(processor, CAPTIONS, imgs), use_itm_head=True).itm_score  # [B, 2]
    expected = logits.softmax(dim=1)[:, 1]  # the conversion script's check: softmax(itm, dim=1)[:, 1]
    got = reranker.score(CAPTIONS, imgs)
    assert isinstance(reranker, BlipITMReranker) and reranker.protocol == "hf"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-2  # the pairs score apart, so a wrong token or position would show


def test_blip_rendered_text_and_tokens(blip):
    folder, _, processor, enc = blip
    hf = load_reranker(folder, preset=BLIP_COCO, device="cpu")
    lavis = load_reranker(folder, preset=BLIP_COCO, device="cpu", protocol="lavis")
    caption = 'A Dog, running!  "Fast" (on: the beach).'
    assert hf.render(caption) == caption  # the card passes the caption to the processor unchanged
    # LAVIS pre_caption, by hand: lower case, each of . ! " ( ) * # : ; ~ -> space, spaces collapsed, ends stripped
    assert lavis.render(caption) == "a dog, running fast on the beach"
    ids, _ = hf.tokenize([CAPTIONS[0]])
    assert ids[0].tolist() == processor.tokenizer(CAPTIONS[0]).input_ids  # [CLS] ... [SEP], as the card's processor
    assert ids[0, 0] == processor.tokenizer.cls_token_id
    assert lavis.enc_token_id == enc  # [DEC] + 1, LAVIS's [ENC]
    assert load_reranker(folder, preset=BLIP_COCO, device="cpu", protocol="lavis", enc_token_id=7).enc_token_id == 7
    long = " ".join(["cat"] * 60)
    assert lavis.tokenize([long])[0].shape[1] == 35 and pre_caption(long) == " ".join(["cat"] * 50)


def lavis_by_hand(model, tokenizer, enc: int, texts, imgs, pixels) -> torch.Tensor:
    """LAVIS compute_sim_matrix's score of each pair: itm_head(text_encoder([ENC] text, image))[:, 1] + ITC cosine,
    with LAVIS's ViT LayerNorm eps (1e-6; the config's is 1e-5)."""
    model = copy.deepcopy(model)
    for module in model.vision_model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    tok = tokenizer([pre_caption(t) for t in texts], padding="max_length", truncation=True, max_length=35,
                    return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels).last_hidden_state
        enc_ids = ids.clone()
        enc_ids[:, 0] = enc
        out = model.text_encoder(input_ids=enc_ids, attention_mask=mask, encoder_hidden_states=image,
                                 encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long))
        itm = model.itm_head(out.last_hidden_state[:, 0])[:, 1]
        # ITC from the model's own cosine branch: [images, texts] similarities, the pairs on the diagonal
        itc = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score.diagonal()
    return itm + itc


def test_blip_lavis_protocol_equals_itm_plus_itc(blip):
    folder, model, processor, enc = blip
    reranker = load_reranker(folder, preset=BLIP_COCO, device="cpu", protocol="lavis")
    imgs = images(len(CAPTIONS), seed=3)
    pixels = pil_pixels(imgs)
    expected = lavis_by_hand(model, processor.tokenizer, enc, CAPTIONS, imgs, pixels)
    torch.testing.assert_close(reranker.score(CAPTIONS, imgs), expected, atol=1e-4, rtol=0)
    # the [ENC] token matters: with [CLS] kept at position 0 the scores differ
    with_cls = lavis_by_hand(model, processor.tokenizer, processor.tokenizer.cls_token_id, CAPTIONS, imgs, pixels)
    assert (with_cls - expected).abs().max() > 1e-2


@pytest.mark.parametrize("protocol", ["hf", "lavis"])
def test_blip_batch_equals_one_by_one(blip, protocol):
    folder = blip[0]
    reranker = load_reranker(folder, preset=BLIP_COCO, device="cpu", protocol=protocol, batch_size=4)
    imgs = images(3, seed=4)
    # t2i and i2t pairs mixed, captions of mixed lengths, images repeated (deduplicated inside a batch)
    queries = [CAPTIONS[i % 5] if i % 2 else imgs[i % 3] for i in range(10)]
    candidates = [imgs[(i + 1) % 3] if i % 2 else CAPTIONS[(i * 3) % 5] for i in range(10)]
    batch = reranker.score(queries, candidates)
    single = torch.cat([reranker.score([q], [c]) for q, c in zip(queries, candidates)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=0)


def test_blip_reranks_both_directions(blip):
    folder = blip[0]
    reranker = load_reranker(folder, preset=BLIP_COCO, device="cpu", batch_size=6)
    imgs = images(4, seed=5)
    pixels = np.stack([np.asarray(img.resize((24, 24))) for img in imgs])
    captions = Texts([f"c{i}" for i in range(4)], CAPTIONS[:4])
    pictures = ImageArray([f"i{i}" for i in range(4)], pixels)
    for name, queries, corpus in [("toy/t2i", captions, pictures), ("toy/i2t", pictures, captions)]:
        qrels = Qrels(queries.ids, corpus.ids, torch.arange(4), torch.arange(4), torch.ones(4))
        task = RetrievalTask(name, queries, corpus, qrels)
        run = Run(torch.tensor([[0, 1, 2, 3]] * 4), torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4), queries.ids, corpus.ids)
        out = reranker.rerank(run, task, rerank_depth=4, progress=False)
        for q in range(4):
            expected = reranker.score([queries[q]] * 4, [corpus[d] for d in range(4)])
            assert out.indices[q].tolist() == torch.sort(expected, descending=True, stable=True).indices.tolist()
            torch.testing.assert_close(out.scores[q], expected.sort(descending=True).values)


def test_blip_flickr_reads_the_processor_elsewhere(blip, tmp_path):
    folder, model, _, _ = blip
    weights_only = tmp_path / "flickr"  # the Flickr uploads: config.json and weights, no processor files
    model.save_pretrained(weights_only)
    with pytest.raises(OSError, match="processor_path"):
        load_reranker(weights_only, preset=BLIP_FLICKR, device="cpu", processor_path=None)
    reranker = load_reranker(weights_only, preset=BLIP_FLICKR, device="cpu", processor_path=str(folder))
    reference = load_reranker(folder, preset=BLIP_COCO, device="cpu")
    imgs = images(2)
    torch.testing.assert_close(reranker.score(CAPTIONS[:2], imgs), reference.score(CAPTIONS[:2], imgs))


def test_blip_errors_name_the_problem(blip, tmp_path):
    folder = blip[0]
    reranker = load_reranker(folder, preset=BLIP_COCO, device="cpu")
    with pytest.raises(TypeError, match="pair 1"):
        reranker.score(["a cat", "a cat"], [images(1)[0], Page(images(1)[0], "ocr")])
    with pytest.raises(TypeError, match="str and str"):
        reranker.score(["a cat"], ["a dog"])
    with pytest.raises(ValueError, match="protocol"):
        load_reranker(folder, preset=BLIP_COCO, device="cpu", protocol="clip")
    other = blip2_checkpoint(tmp_path / "blip2", placeholders=False)[0]
    with pytest.raises(ValueError, match="'blip-2' checkpoint"):
        load_reranker(other, preset=BLIP_COCO, device="cpu")


# --- BLIP-2 ------------------------------------------------------------------------------------------------------


def test_blip2_scores_equal_the_models_own_forward(blip2):
    folder, model, processor = blip2
    reranker = load_reranker(folder, preset=BLIP2, device="cpu")
    imgs = images(len(CAPTIONS), seed=6)
    with torch.no_grad():
        out = model(**card_inputs(processor, CAPTIONS, imgs), use_image_text_matching_head=True)
    # the card (Blip2ForImageTextRetrieval docstring): softmax over the query-averaged ITM logits, index 1 = match
    expected = out.logits_per_image.softmax(dim=1)[:, 1]
    assert isinstance(reranker, Blip2ITMReranker)
    torch.testing.assert_close(reranker.score(CAPTIONS, imgs), expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-2


def test_blip2_lavis_protocol_equals_itm_plus_itc(blip2):
    folder, model, processor = blip2
    reranker = load_reranker(folder, preset=BLIP2, device="cpu", protocol="lavis")
    imgs = images(len(CAPTIONS), seed=7)
    texts = [pre_caption(t) for t in CAPTIONS]
    inputs = card_inputs(processor, texts, imgs)
    with torch.no_grad():
        # LAVIS compute_itm: itm_head over the query outputs, logit 1, mean over queries (= the mean logits' [:, 1])
        itm = model(**inputs, use_image_text_matching_head=True).logits_per_image[:, 1]
        # LAVIS ITC: the best query's cosine with the caption's [CLS]; the model gives [images, texts], pairs diagonal
        itc = model(**inputs, use_image_text_matching_head=False).logits_per_image.diagonal()
    torch.testing.assert_close(reranker.score(CAPTIONS, imgs), itm + itc, atol=1e-4, rtol=0)


@pytest.mark.parametrize("protocol", ["hf", "lavis"])
def test_blip2_batch_equals_one_by_one(blip2, protocol):
    reranker = load_reranker(blip2[0], preset=BLIP2, device="cpu", protocol=protocol, batch_size=3)
    imgs = images(2, seed=8)
    queries = [imgs[i % 2] if i % 3 else CAPTIONS[i % 5] for i in range(7)]
    candidates = [CAPTIONS[(i + 2) % 5] if i % 3 else imgs[(i + 1) % 2] for i in range(7)]
    batch = reranker.score(queries, candidates)
    single = torch.cat([reranker.score([q], [c]) for q, c in zip(queries, candidates)])
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=0)


def test_blip2_refuses_a_qformer_without_text_layers(blip2, tmp_path):
    _, model, processor = blip2
    config = model.config.to_dict()
    config["qformer_config"]["use_qformer_text_input"] = False
    Blip2Config(**config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use_qformer_text_input"):
        load_reranker(tmp_path, preset=BLIP2, device="cpu")


def test_presets_name_every_checkpoint():
    from mmrerank.rerankers.presets import presets

    known = presets()
    names = [f"Salesforce/blip-itm-{size}-{data}" for data in ("coco", "flickr") for size in ("base", "large")]
    for name in [*names, BLIP2]:
        assert known[name].family == "blip" and known[name].tasks == ("t2i", "i2t")
    # the Flickr uploads carry no processor: each falls back on its COCO sibling of the same size
    assert known["Salesforce/blip-itm-large-flickr"].options == {"processor_path": "Salesforce/blip-itm-large-coco"}
    assert known[BLIP_COCO].options == {}
