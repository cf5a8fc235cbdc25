"""MLLM reranker on a tiny random Qwen2-VL: label tokens, scores from raw logits, left padding, losses, training."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrerank.losses import listwise_softmax
from mmrerank.rerankers.mllm import MLLMReranker, Page, PairOutput, as_page, build_tiny_vlm, resolve_label_ids
from mmrerank.rerankers.mllm.module import LoraSettings, MLLMRerankerModule, MLLMTraining, collate_groups, sft_loss

QUERIES = ["red cat", "a much longer query about the blue tower next to the green bridge", "dog",
           "the chart lists revenue"]


def _image(seed: int, size=(70, 90)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), seed=0)


@pytest.fixture(scope="module")
def reranker(tiny_folder):
    return MLLMReranker(tiny_folder, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def images():
    # Different sizes give different numbers of visual tokens, so sequences differ in length for that reason too.
    return [_image(i, (56 + 14 * i, 84)) for i in range(len(QUERIES))]


def test_loads_through_from_pretrained(tiny_folder):
    model = AutoModelForImageTextToText.from_pretrained(tiny_folder)
    processor = AutoProcessor.from_pretrained(tiny_folder)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.tokenizer.encode("<|image_pad|>", add_special_tokens=False) == [model.config.image_token_id]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hello"}]}],
        tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "<|vision_start|><|image_pad|><|vision_end|>hello" in text


def test_label_tokens_resolved_and_checked(reranker):
    tok = reranker.processor.tokenizer
    for word in ("True", "False", "yes", "no"):
        ids = resolve_label_ids(tok, (word, "False" if word != "False" else "True"))
        assert tok.convert_ids_to_tokens(ids[0]) == word
    assert reranker.label_ids == [tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")]
    assert len(tok.encode("Maybe", add_special_tokens=False)) > 1  # the premise of the error case
    with pytest.raises(ValueError, match=r"'Maybe'.*splits it into"):
        resolve_label_ids(tok, ("Maybe", "False"))
    with pytest.raises(ValueError, match="same token"):
        resolve_label_ids(tok, ("True", "True"))


def test_score_is_label_softmax_of_raw_logits(reranker, tiny_folder, images):
    """Recompute the score from the plain model's full logits with a hand-written two-way softmax."""
    model = AutoModelForImageTextToText.from_pretrained(tiny_folder).eval()
    tok = reranker.processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")
    logprob = reranker.score(QUERIES, images)
    for i, (query, image) in enumerate(zip(QUERIES, images)):
        text = reranker.chat_text(query, Page(image))
        assert text.endswith("The query is: " + query + "<|im_end|>\n<|im_start|>assistant\n")
        inputs = reranker.processor(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            last = model(**inputs).logits[0, -1]  # [V]
        a, b = float(last[yes]), float(last[no])
        expected = math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
        assert logprob[i].item() == pytest.approx(expected, abs=1e-5)
    out = reranker.logits_for(QUERIES, images)
    assert out.label_logits.shape == (len(QUERIES), 2) and out.head is None
    reranker.score_mode = "logit_diff"
    try:
        diff = reranker.score(QUERIES, images)
    finally:
        reranker.score_mode = "logprob"
    torch.testing.assert_close(diff, (out.label_logits[:, 0] - out.label_logits[:, 1]).detach(), atol=1e-5, rtol=0)


def test_batched_left_padding_equals_one_by_one(reranker, images):
    batched = reranker.score(QUERIES, images)
    single = torch.cat([reranker.score([q], [img]) for q, img in zip(QUERIES, images)])
    assert batched.shape == (len(QUERIES),)
    assert batched.std() > 1e-3  # the scores differ between pairs, so the comparison means something
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    inputs = reranker.encode(QUERIES, images)
    assert (inputs["attention_mask"][:, -1] == 1).all() and (inputs["attention_mask"][:, 0] == 0).any()


def test_ocr_text_and_candidate_forms(tiny_folder, images):
    ocr = MLLMReranker(tiny_folder, use_ocr=True, device="cpu")
    page = as_page((images[0], "invoice total 42"))
    assert as_page({"image": images[0], "ocr": "invoice total 42"}) == page
    assert ocr.prompt_text("q", page) == "The document text is: invoice total 42\n" + ocr.prompt.format(query="q")
    scores = ocr.score(["q", "q"], [page, images[0]])  # with and without OCR text: different inputs
    assert scores.shape == (2,) and scores[0] != scores[1]


def test_mlp_head_scores_and_reloads(tiny_folder, images, tmp_path):
    headed = MLLMReranker(tiny_folder, head="mlp", device="cpu")
    out = headed.logits_for(QUERIES[:2], images[:2])
    manual = headed.head(out.hidden).squeeze(-1)
    scores = headed.score(QUERIES[:2], images[:2])
    torch.testing.assert_close(scores, manual.detach(), atol=1e-5, rtol=0)
    headed.save_head(tmp_path / "head.pt")
    reloaded = MLLMReranker(tiny_folder, head="mlp", head_path=tmp_path / "head.pt", device="cpu")
    torch.testing.assert_close(reloaded.score(QUERIES[:2], images[:2]), scores, atol=1e-6, rtol=0)


def test_rank_orders_by_score(reranker, images):
    scores = reranker.score([QUERIES[0]] * len(images), images)
    ranked = reranker.rank(QUERIES[0], images)
    assert ranked.order == sorted(range(len(images)), key=lambda i: -scores[i].item())


def test_sft_and_contrastive_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [-1.0, 1.0], [0.0, 0.0]])  # [N=4, (True, False)]
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two groups of (positive, negative), row-major like logits

    def nll(true_logit, false_logit, want_true):
        z = math.exp(true_logit) + math.exp(false_logit)
        return -math.log((math.exp(true_logit) if want_true else math.exp(false_logit)) / z)

    hand_sft = (nll(2.0, 0.0, True) + nll(0.5, 1.5, False) + nll(-1.0, 1.0, True) + nll(0.0, 0.0, False)) / 4
    assert sft_loss(logits, labels).item() == pytest.approx(hand_sft, abs=1e-6)

    # InfoNCE on the True logits: group 1 scores (2.0, 0.5), group 2 (-1.0, 0.0), positive first.
    hand_nce = (-math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.5)))
                - math.log(math.exp(-1.0) / (math.exp(-1.0) + math.exp(0.0)))) / 2
    module = MLLMRerankerModule.__new__(MLLMRerankerModule)  # only loss_from is exercised: no model needed
    L.LightningModule.__init__(module)
    module.losses, module.training_settings = [("contrastive", 1.0)], MLLMTraining(temperature=1.0)
    out = PairOutput(logits, None, torch.zeros(4, 1))
    assert module.loss_from(out, labels).item() == pytest.approx(hand_nce, abs=1e-6)
    assert listwise_softmax(logits[:, 0].view(2, 2), labels).item() == pytest.approx(hand_nce, abs=1e-6)
    module.losses = [("sft", 1.0)]
    assert module.loss_from(out, labels).item() == pytest.approx(hand_sft, abs=1e-6)
    # RankNet: softplus(-(s_pos - s_neg)) averaged over the two pairs.
    module.losses = [("pairwise", 1.0)]
    hand_ranknet = (math.log1p(math.exp(-(2.0 - 0.5))) + math.log1p(math.exp(-(-1.0 - 0.0)))) / 2
    assert module.loss_from(out, labels).item() == pytest.approx(hand_ranknet, abs=1e-6)


def test_collate_groups():
    batch = collate_groups([("q1", ["p1", "n1", "n2"]), ("q2", ["p2", "n3", "n4"])])
    assert batch["queries"] == ["q1", "q2"] and batch["candidates"] == ["p1", "n1", "n2", "p2", "n3", "n4"]
    assert batch["labels"].tolist() == [[1, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="same number"):
        collate_groups([("q1", ["p1", "n1"]), ("q2", ["p2"])])


@pytest.mark.parametrize("lora_r", [0, 4])
def test_sft_steps_reduce_loss(tiny_folder, images, lora_r):
    """Three AdamW steps (through a Lightning Trainer) on one tiny batch lower that batch's SFT loss."""
    torch.manual_seed(0)
    groups = [(QUERIES[0], [images[0], images[1]]), (QUERIES[2], [images[2], images[3]])]
    batch = collate_groups(groups)
    module = MLLMRerankerModule(str(tiny_folder), loss_functions=[("sft", 1.0)], lora=LoraSettings(r=lora_r),
                                training=MLLMTraining(lr=1e-2 if lora_r else 1e-3))
    if lora_r:
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)

    def loss_now() -> float:
        with torch.no_grad():
            return module._step(batch)[0].item()

    before = loss_now()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(groups, batch_size=2, collate_fn=collate_groups))
    module.eval()
    after = loss_now()
    assert trainer.global_step == 3
    assert after < before - 1e-3, (before, after)


def test_lora_adapter_saves_and_loads(tiny_folder, images, tmp_path):
    """A LoRA adapter saved by the module loads through `MLLMReranker(adapter=...)` and gives the same scores."""
    module = MLLMRerankerModule(str(tiny_folder), lora=LoraSettings(r=4))
    with torch.no_grad():  # LoRA's B starts at zero (a no-op); make the adapter change the model
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    trained = module.reranker.score(QUERIES, images)
    base = MLLMReranker(tiny_folder, device="cpu").score(QUERIES, images)
    assert (trained - base).abs().max() > 1e-3
    module.save_pretrained(tmp_path / "adapter")
    loaded = MLLMReranker(tiny_folder, adapter=tmp_path / "adapter", device="cpu")
    torch.testing.assert_close(loaded.score(QUERIES, images), trained, atol=1e-5, rtol=0)
    again = MLLMReranker.from_pretrained(tmp_path / "adapter", device="cpu")  # the folder names its base model
    assert json.loads((tmp_path / "adapter" / "reranker.json").read_text())["base"] == str(tiny_folder)
    torch.testing.assert_close(again.score(QUERIES, images), trained, atol=1e-5, rtol=0)


def test_save_pretrained_round_trip_keeps_the_settings_and_the_head(tiny_folder, images, tmp_path):
    torch.manual_seed(0)
    headed = MLLMReranker(tiny_folder, head="mlp", score="logit", use_ocr=True, prompt="Relevant to {query}?",
                          device="cpu")
    headed.save_pretrained(tmp_path / "saved")
    again = MLLMReranker.from_pretrained(tmp_path / "saved", device="cpu")
    assert again.settings() == headed.settings() and (tmp_path / "saved" / "head.safetensors").is_file()
    torch.testing.assert_close(again.score(QUERIES, images), headed.score(QUERIES, images), atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="reranker.json"):
        MLLMReranker.from_pretrained(tiny_folder)


def test_logit_score_and_loss_dependent_scoring(reranker, tiny_folder, images):
    out = reranker.logits_for(QUERIES, images)
    reranker.score_mode = "logit"
    try:
        raw = reranker.score(QUERIES, images)
    finally:
        reranker.score_mode = "logprob"
    torch.testing.assert_close(raw, out.label_logits[:, 0].detach(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="score must be one of"):
        MLLMReranker(tiny_folder, score="prob", device="cpu")
    # a module scores with what its loss trains: the label softmax after SFT, the raw positive logit otherwise
    assert MLLMRerankerModule(str(tiny_folder), loss_functions=[("sft", 1.0)]).reranker.score_mode == "logprob"
    assert MLLMRerankerModule(str(tiny_folder), loss_functions=[("contrastive", 1.0)]).reranker.score_mode == "logit"


def test_lr_schedule_warms_up_then_decays():
    from mmrerank.rerankers.mllm.module import lr_factor

    warm = [lr_factor(s, warmup=4, total=14, schedule="cosine") for s in range(16)]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0]
    assert warm[4] == pytest.approx(1.0) and warm[9] == pytest.approx(0.5) and warm[14] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(warm[3:], warm[4:])) and warm[15] == pytest.approx(0.0)
    assert [lr_factor(s, 0, 10, "constant") for s in (0, 5, 20)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule must be one of"):
        MLLMRerankerModule.__init__(MLLMRerankerModule.__new__(MLLMRerankerModule), "unused",
                                    training=MLLMTraining(schedule="linear"))


def test_tokenizer_corpus_gives_its_words_tokens():
    from mmrerank.rerankers.mllm.tiny import build_tokenizer

    word = " population"
    assert len(build_tokenizer(0).encode(word, add_special_tokens=False)) > 3  # character pieces without it
    tok = build_tokenizer(0, corpus=["the population grew"] * 50)
    assert tok.convert_ids_to_tokens(tok.encode(word, add_special_tokens=False)) == ["Ġpopulation"]
    assert len(tok.encode("True", add_special_tokens=False)) == 1  # the labels stay single tokens
