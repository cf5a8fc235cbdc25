"""The published VLM rerankers (`mmrerank.rerankers.mllm.presets`) on tiny random models in their hub formats.

Each tiny model is written as the hub repository is laid out (`tiny_presets.py`) and loaded through
`load_reranker(folder, preset=<hub id>)`, the path a user's download takes. For each preset: the rendered prompt
equals the card's (string compare, the card's text cited), the score equals a hand-written forward pass of the
plain transformers model, and batched (left-padded, mixed lengths) scores equal one-by-one scores.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrerank.rerankers.mllm import MLLMReranker, Page, build_tiny_vlm
from mmrerank.rerankers.mllm.presets import JINA, LYCHEE, LYCHEE_INSTRUCTION, MONOQWEN, PRESETS, QWEN3_VL_2B
from mmrerank.rerankers.mllm.tiny_presets import (
    build_tiny_jina,
    build_tiny_lora,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
)
from mmrerank.rerankers.presets import load_reranker, presets

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QUERIES = ["red circle", "a page that lists the revenue of the museum", "tree", "the blue square shows a chart"]
CAPTIONS = ["a red circle", "the museum report lists revenue per year", "green tree", "chart of a blue square"]


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


@pytest.fixture(scope="module")
def images():
    # different sizes: different numbers of visual tokens, so the padded lengths differ for that reason too
    return [_image(i, (64 + 16 * i, 72 + 8 * i)) for i in range(len(QUERIES))]


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("qwen2_vl") / "model", seed=1)


@pytest.fixture(scope="module")
def jina_folder(tmp_path_factory):
    return build_tiny_jina(tmp_path_factory.mktemp("jina") / "jina-reranker-m0", seed=2)


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3") / "Qwen3-VL-Reranker-2B", seed=3)


@pytest.fixture(scope="module")
def lychee_folder(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("lychee") / "lychee-rerank-mm", seed=4)


@pytest.fixture(scope="module")
def old_adapter(tmp_path_factory, qwen2_vl):
    """A MonoQwen2-VL-style adapter saved under the 2024 key names (`base_model.model.model.layers.*`)."""
    return build_tiny_lora(qwen2_vl, tmp_path_factory.mktemp("monoqwen") / "MonoQwen2-VL-v0.1", seed=5)


def _sigmoid(x: float) -> float:
    return float(torch.sigmoid(torch.tensor(x, dtype=torch.float64)))


def _assert_batch_equals_single(reranker, queries, candidates):
    batched = reranker.score(queries, candidates)
    single = torch.cat([reranker.score([q], [c]) for q, c in zip(queries, candidates)])
    assert batched.shape == (len(queries),) and batched.std() > 1e-4  # the pairs differ, so the check means something
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)
    inputs = reranker.encode(queries, candidates)
    assert (inputs["attention_mask"][:, 0] == 0).any()  # some rows are left-padded: lengths really differ


def test_every_mllm_preset_is_registered_with_what_it_needs():
    known = presets()
    for name, preset in PRESETS.items():
        assert known[name] is preset and preset.family == "mllm" and preset.licence and preset.tasks
    assert PRESETS[MONOQWEN].extras == ("lora",)
    with pytest.raises(ValueError, match="jinaai/jina-reranker-m0"):  # an unknown name lists the presets
        load_reranker("jinaai/jina-reranker-m1")


# --- lightonai/MonoQwen2-VL-v0.1 -----------------------------------------------------------------------------------

def _monoqwen_card_text(query: str) -> str:
    # The card (lightonai/MonoQwen2-VL-v0.1 README, "How to use"): the prompt "Assert the relevance of the previous
    # image document to the following query, answer True or False. The query is: {query}" after the image in one
    # user turn, through Qwen2-VL-2B-Instruct's chat template (which adds "You are a helpful assistant.").
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + IMAGE
            + "Assert the relevance of the previous image document to the following query, answer True or False. "
            f"The query is: {query}<|im_end|>\n<|im_start|>assistant\n")


def test_monoqwen_prompt_and_score_are_the_cards(old_adapter, images):
    reranker = load_reranker(old_adapter, preset=MONOQWEN, device="cpu")
    assert reranker.chat_text(QUERIES[1], images[0]) == _monoqwen_card_text(QUERIES[1])
    # the card's score: softmax(logits[:, -1, [True, False]])[:, 0], from the merged model's full logits
    tok = reranker.processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")
    inputs = reranker.processor(text=[_monoqwen_card_text(QUERIES[2])], images=[images[2]], return_tensors="pt")
    with torch.no_grad():
        last = reranker.model(**inputs).logits[0, -1].double()
    expected = torch.softmax(last[[yes, no]], dim=0)[0].item()
    assert reranker.score([QUERIES[2]], [images[2]]).item() == pytest.approx(expected, abs=1e-5)
    _assert_batch_equals_single(reranker, QUERIES, images)


def _merged_by_hand(base, adapter) -> torch.nn.Module:
    """The base model with W + (alpha / r) B A added to each adapted Linear, reading the old-layout file by hand:
    `base_model.model.model.<path>` is today's `model.language_model.<path>`."""
    model = AutoModelForImageTextToText.from_pretrained(base).eval()
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, a in weights.items():
            if ".lora_A." not in key:
                continue
            path = re.sub(r"^base_model\.model\.model\.", "model.language_model.", key.split(".lora_A.")[0])
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            modules[path].weight += scale * (b @ a)
    return model


def test_old_layout_adapter_is_applied_not_dropped(qwen2_vl, old_adapter, images):
    """Issue 13 item 5: peft alone drops these keys (warning "Found missing adapter keys") and the base scores."""
    assert any(k.startswith("base_model.model.model.layers.")
               for k in load_file(str(old_adapter / "adapter_model.safetensors")))  # the premise: the old layout
    adapted = MLLMReranker(qwen2_vl, adapter=old_adapter, device="cpu").score(QUERIES, images)
    base = MLLMReranker(qwen2_vl, device="cpu")
    assert (adapted - base.score(QUERIES, images)).abs().max() > 1e-3
    base.model = _merged_by_hand(qwen2_vl, old_adapter)
    torch.testing.assert_close(adapted, base.score(QUERIES, images), atol=1e-5, rtol=0)
    unmerged = MLLMReranker(qwen2_vl, adapter=old_adapter, merge_adapter=False, device="cpu")
    torch.testing.assert_close(unmerged.score(QUERIES, images), adapted, atol=1e-5, rtol=0)


def test_adapter_that_fits_no_module_raises(qwen2_vl, old_adapter, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(old_adapter, foreign)
    file = foreign / "adapter_model.safetensors"
    weights = {k.replace("model.layers.", "model.decoder.blocks."): v for k, v in load_file(str(file)).items()}
    save_file(weights, str(file), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not fit the model.*match no module"):
        MLLMReranker(qwen2_vl, adapter=foreign, device="cpu")


def test_monoqwen_refuses_what_its_card_does_not_take(old_adapter, images):
    reranker = load_reranker(old_adapter, preset=MONOQWEN, device="cpu")
    with pytest.raises(ValueError, match="'monoqwen'.*document that is image or image\\+text, not text"):
        reranker.score(["q"], ["a caption is no image document"])
    with pytest.raises(ValueError, match="'monoqwen'.*query that is text, not image"):
        reranker.score([images[0]], [images[1]])


# --- jinaai/jina-reranker-m0 ---------------------------------------------------------------------------------------

def _jina_card_text(query: str | None, doc: str | None) -> str:
    # modeling.py `formatting_prompts_func`: doc_part = "**Document**:\n" + (image placeholder or doc text),
    # query_part = "**Query**:\n" + (image placeholder or query text), prompt = doc_part + "\n" + query_part.
    return "**Document**:\n" + (doc if doc is not None else IMAGE) + "\n**Query**:\n" + (
        query if query is not None else IMAGE)


def _jina_by_hand(folder, text: str, images: list[Image.Image]) -> float:
    """jina's `compute_score` for one pair: the processor with its pixel limits, token 100 appended, the head
    (`score.0` -> ReLU -> `score.2`, read from the safetensors file) on `hidden_states[-1][:, -1]`, then
    sigmoid(x - 2.65)."""
    processor = AutoProcessor.from_pretrained(folder, max_pixels=602112, min_pixels=3136)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    batch = processor(text=[text], images=images or None, return_tensors="pt")
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((1, 1), 100)], dim=1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
    batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
    head = load_file(str(folder / "model.safetensors"))
    x = torch.relu(head["score.0.weight"] @ hidden + head["score.0.bias"])
    return _sigmoid(float(head["score.2.weight"] @ x + head["score.2.bias"]) - 2.65)


def test_jina_prompt_and_score_are_the_cards(jina_folder, images):
    reranker = load_reranker(jina_folder, preset=JINA, device="cpu")
    assert reranker.chat_text(QUERIES[0], images[1]) == _jina_card_text(QUERIES[0], None)  # text -> image
    assert reranker.chat_text(images[1], CAPTIONS[2]) == _jina_card_text(None, CAPTIONS[2])  # image -> text
    assert reranker.chat_text(QUERIES[0], CAPTIONS[2]) == _jina_card_text(QUERIES[0], CAPTIONS[2])
    assert reranker.score([QUERIES[1]], [images[3]]).item() == pytest.approx(
        _jina_by_hand(jina_folder, _jina_card_text(QUERIES[1], None), [images[3]]), abs=1e-5)
    assert reranker.score([images[2]], [CAPTIONS[0]]).item() == pytest.approx(
        _jina_by_hand(jina_folder, _jina_card_text(None, CAPTIONS[0]), [images[2]]), abs=1e-5)
    # image query against image document: the document's image comes first, as in the text
    assert reranker.score([images[0]], [images[1]]).item() == pytest.approx(
        _jina_by_hand(jina_folder, _jina_card_text(None, None), [images[1], images[0]]), abs=1e-5)


def test_jina_batches_equal_one_by_one(jina_folder, images):
    reranker = load_reranker(jina_folder, preset=JINA, device="cpu")
    _assert_batch_equals_single(reranker, QUERIES, images)  # t2i / pages
    _assert_batch_equals_single(reranker, images, CAPTIONS)  # i2t
    _assert_batch_equals_single(reranker, QUERIES, [images[0], CAPTIONS[1], images[2], CAPTIONS[3]])  # mixed


def test_jina_head_under_vllm_names_and_missing_head(jina_folder, images, tmp_path):
    expected = load_reranker(jina_folder, preset=JINA, device="cpu").score(QUERIES, images)
    renamed = tmp_path / "renamed"
    shutil.copytree(jina_folder, renamed)
    file = renamed / "model.safetensors"
    weights = load_file(str(file))
    names = {"score.0.": "score.dense.", "score.2.": "score.out_proj."}
    save_file({next((k.replace(a, b) for a, b in names.items() if k.startswith(a)), k): v for k, v in weights.items()},
              str(file), metadata={"format": "pt"})
    torch.testing.assert_close(load_reranker(renamed, preset=JINA, device="cpu").score(QUERIES, images), expected,
                               atol=1e-6, rtol=0)
    save_file({k: v for k, v in weights.items() if not k.startswith("score.2.")}, str(file), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no ranking head Linear 2 / out_proj.*\['0.bias', '0.weight'\]"):
        load_reranker(renamed, preset=JINA, device="cpu")


def test_jina_refuses_a_document_with_image_and_text(jina_folder, images):
    reranker = load_reranker(jina_folder, preset=JINA, use_ocr=True, device="cpu")
    with pytest.raises(ValueError, match="'jina'.*document that is text or image, not image\\+text"):
        reranker.score(["q"], [Page(images[0], "ocr text")])
    assert reranker.score(["q"], [Page(images[0])]).shape == (1,)  # a page without text is an image document


def test_jina_round_trips_through_save_pretrained(jina_folder, images, tmp_path):
    reranker = load_reranker(jina_folder, preset=JINA, device="cpu")
    reranker.save_pretrained(tmp_path / "saved")
    again = MLLMReranker.from_pretrained(tmp_path / "saved", device="cpu")
    assert again.settings() == reranker.settings() and again.settings()["score_token_id"] == 100
    torch.testing.assert_close(again.score(QUERIES, images), reranker.score(QUERIES, images), atol=1e-5, rtol=0)


# --- Qwen/Qwen3-VL-Reranker-2B / -8B and vec-ai/lychee-rerank-mm ---------------------------------------------------

def _yes_no_card_text(instruction: str, query: str, document: str) -> str:
    # examples/reranker_template.jinja of QwenLM/Qwen3-VL-Embedding (commit 8ce3aab1): "<|im_start|>system\nJudge
    # whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer
    # can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: {{ instruction }}<Query>:{{ query_content
    # }}\n<Document>:{{ doc_content }}<|im_end|>\n<|im_start|>assistant\n", a side's content being its image
    # placeholder then its text (`parse_input_dict` in examples/reranker_vllm.ipynb).
    return ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
            'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
            f"<Instruct>: {instruction}<Query>:{query}\n<Document>:{document}<|im_end|>\n<|im_start|>assistant\n")


QWEN3_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."  # the code's default


def _yes_no_by_hand(reranker, text: str, images: list[Image.Image]) -> float:
    """sigmoid(logit_yes - logit_no) at the last position of the plain model's full logits (Qwen3VLReranker
    .compute_scores: a Linear of lm_head[yes] - lm_head[no] on the last hidden state, then a sigmoid)."""
    tok = reranker.processor.tokenizer
    inputs = reranker.processor(text=[text], images=images or None, return_tensors="pt")
    with torch.no_grad():
        last = reranker.model(**inputs).logits[0, -1].double()
    return _sigmoid(float(last[tok.get_vocab()["yes"]] - last[tok.get_vocab()["no"]]))


def test_qwen3_vl_prompt_and_score_are_the_cards(qwen3_folder, images):
    reranker = load_reranker(qwen3_folder, preset=QWEN3_VL_2B, use_ocr=True, device="cpu")
    assert type(reranker.model).__name__ == "Qwen3VLForConditionalGeneration"
    cases = [(QUERIES[0], images[0], _yes_no_card_text(QWEN3_INSTRUCTION, QUERIES[0], IMAGE)),
             (images[1], CAPTIONS[1], _yes_no_card_text(QWEN3_INSTRUCTION, IMAGE, CAPTIONS[1])),
             (QUERIES[2], Page(images[2], "page text"), _yes_no_card_text(QWEN3_INSTRUCTION, QUERIES[2],
                                                                           IMAGE + "page text"))]
    # the code's qwen-vl-utils resize to the 32-pixel grid: 64 x 72 and 80 x 80 -> 64 x 64, 96 x 88 -> 96 x 96
    resized = [images[0].resize((64, 64), Image.BICUBIC), images[1].resize((64, 64), Image.BICUBIC),
               images[2].resize((96, 96), Image.BICUBIC)]
    for (query, document, card), image in zip(cases, resized):
        assert reranker.chat_text(query, document) == card
        text, _ = reranker.render(query, document)
        assert reranker.score([query], [document]).item() == pytest.approx(
            _yes_no_by_hand(reranker, text, [image]), abs=1e-5)
    # the checkpoint's images limits are the code's: MIN_PIXELS 4 * 32 * 32, MAX_PIXELS 1800 * 32 * 32
    assert reranker.processor.image_processor.size["longest_edge"] == 1800 * 32 * 32


def test_qwen3_vl_text_equals_the_chat_template_of_the_authors_messages(qwen3_folder, images):
    """The HF path of the authors' code (`format_mm_instruction`, then `apply_chat_template`) gives the same text."""
    reranker = load_reranker(qwen3_folder, preset=QWEN3_VL_2B, device="cpu")
    system = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note '
              'that the answer can only be "yes" or "no".')
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": "<Instruct>: " + QWEN3_INSTRUCTION},
                                             {"type": "text", "text": "<Query>:"}, {"type": "text", "text": QUERIES[1]},
                                             {"type": "text", "text": "\n<Document>:"},
                                             {"type": "image", "image": images[0]}]}]
    chat = reranker.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert reranker.chat_text(QUERIES[1], images[0]) == chat


def test_qwen3_vl_batches_equal_one_by_one(qwen3_folder, images):
    reranker = load_reranker(qwen3_folder, preset=QWEN3_VL_2B, use_ocr=True, device="cpu")
    _assert_batch_equals_single(reranker, QUERIES, images)  # t2i
    _assert_batch_equals_single(reranker, images, CAPTIONS)  # i2t
    pages = [Page(image, caption) for image, caption in zip(images, CAPTIONS)]
    _assert_batch_equals_single(reranker, QUERIES, pages)  # pages, image and OCR text


def test_lychee_prompt_score_and_batches(lychee_folder, images):
    reranker = load_reranker(lychee_folder, preset=LYCHEE, device="cpu")
    assert type(reranker.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    card = _yes_no_card_text(LYCHEE_INSTRUCTION, QUERIES[3], IMAGE)
    assert reranker.chat_text(QUERIES[3], images[3]) == card
    # the card's score: log_softmax over (no, yes) at the last position, exp of the yes column
    # the card's images come from qwen-vl-utils' fetch_image: 112 x 96 pixels become 112 x 84 (sides rounded to
    # multiples of 28) with PIL's bicubic filter, before the processor
    resized = images[3].resize((112, 84), Image.BICUBIC)
    assert reranker.score([QUERIES[3]], [images[3]]).item() == pytest.approx(
        _yes_no_by_hand(reranker, card, [resized]), abs=1e-5)
    assert reranker.processor.image_processor.size["longest_edge"] == 1280 * 28 * 28
    _assert_batch_equals_single(reranker, QUERIES, images)
    _assert_batch_equals_single(reranker, images, CAPTIONS)
