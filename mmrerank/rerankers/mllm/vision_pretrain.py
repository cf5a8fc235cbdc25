"""Pretrain the tiny Qwen2-VL's visual side before reranker training, as real VLMs are pretrained.

A real VLM's vision tower comes from CLIP-style pretraining and its language model has read many captions of
images before anyone fine-tunes it as a reranker. The tiny random Qwen2-VL of `tiny.py` has neither, and 1,500
CPU steps of yes/no training do not teach it to see colours and shapes. Two short stages give it both:

1. **Distillation** (vision tower only): the first stage's frozen ResNet image tower (already trained on the
   synthetic train split) is the teacher. Its stride-8 feature map, average-pooled to the tower's merged grid
   (one teacher vector per merged visual token), is regressed (cosine) from each merged token through a linear
   head; and the mean merged token, through a second head, is trained CLIP-style (InfoNCE, both directions)
   against the first stage's frozen caption embeddings, which are aligned with the images already.
2. **Captioning** (language model, vision tower frozen): next-token loss on the caption after the image, in
   the reranker's own prompt (`{query}` = the caption), so the language model learns to read the visual tokens
   with the words that describe them -- LLaVA's alignment stage, in miniature. Optionally (`itm_weight`) with
   BLIP's image-text matching beside it: the reranker's own True/False answer for each caption with its image,
   with another image of the batch and with its near-duplicate twin (labelled by the scene graphs), so the
   answer position learns to use what captioning taught before it meets the hard negatives of reranker training.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import Qwen2VLForConditionalGeneration

from mmrerank.datasets.imagetext import ImageTextDataset
from mmrerank.rerankers.mllm.module import sft_loss
from mmrerank.rerankers.mllm.reranker import DEFAULT_PROMPT, MLLMReranker
from mmrerank.rerankers.mllm.tiny import build_tiny_vlm
from mmrerank.retrieval.clip import CLIPEncoder


@dataclass
class PretrainConfig:
    """Settings of both stages.

    Args:
        image_size: side the images are resized to for the VLM (112 px: a 4x4 grid of merged visual tokens).
        distill_steps, distill_batch, distill_lr: stage 1 (images per step).
        contrastive_weight: weight of the CLIP-style caption InfoNCE next to the token regression.
        temperature: of that InfoNCE.
        caption_steps, caption_batch, caption_lr: stage 2 (image-caption pairs per step); 0 steps skips it.
        itm_weight: weight of the True/False matching loss in stage 2 (0: captioning only).
        itm_twins: add each image's near-duplicate as a second matching negative (measured: no better).
        feature_index: which ResNet stage the teacher tokens come from (2: stride 8, an 8x8 map at 64 px).
        seed: seeds the tiny VLM's init, the tokenizer corpus order and the batches.
    """

    image_size: int = 112
    distill_steps: int = 600
    distill_batch: int = 64
    distill_lr: float = 2e-3
    contrastive_weight: float = 1.0
    temperature: float = 0.07
    caption_steps: int = 2000
    caption_batch: int = 16
    caption_lr: float = 1e-3
    itm_weight: float = 1.0
    itm_twins: bool = False
    feature_index: int = 2
    seed: int = 0


def _cosine_lr(step: int, total: int, warmup: int = 50) -> float:
    """Linear warm-up then cosine decay to 0 (the multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


class Teacher:
    """The first stage's frozen image and text towers: the targets of the distillation.

    Args:
        model_name, checkpoint: the first stage (`CLIPEncoder(model_name).load_weights(checkpoint)`).
        feature_index: the ResNet stage whose feature map gives the token targets.
        grid: side of the student's merged-token grid; the feature map is average-pooled to `grid x grid`.
    """

    def __init__(self, model_name: str, checkpoint: str | Path, feature_index: int = 2, grid: int = 4) -> None:
        self.encoder = CLIPEncoder(model_name)
        self.encoder.load_weights(checkpoint)
        self.encoder.eval().requires_grad_(False)
        self.feature_index, self.grid = feature_index, grid

    @torch.no_grad()
    def image_tokens(self, images: Sequence[Image.Image]) -> Tensor:
        """`B` images -> `[B, grid*grid, C]` token targets, row-major over the grid like Qwen2-VL's merged tokens."""
        pixels = self.encoder.image_tensor([img.convert("RGB") for img in images])
        trunk = self.encoder.model.visual.trunk
        fmap = trunk.forward_intermediates(pixels, indices=[self.feature_index], intermediates_only=True)[0]
        fmap = F.adaptive_avg_pool2d(fmap, self.grid)  # [B, C, H, W] -> [B, C, grid, grid]
        return fmap.flatten(2).transpose(1, 2).float()

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 512) -> Tensor:
        """`N` captions -> `[N, d]` L2-normalised first-stage text embeddings."""
        return torch.cat([self.encoder.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])


class VisionStudent(nn.Module):
    """The VLM's vision tower plus the two heads that only pretraining uses (they are not saved).

    Args:
        visual: `Qwen2VisionTransformerPretrainedModel` (the VLM's `model.visual`, trained in place).
        hidden: width of its merged tokens (the language model's width).
        teacher_dim, embed_dim: widths of the teacher's tokens and of its joint image-text space.
    """

    def __init__(self, visual: nn.Module, hidden: int, teacher_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.visual = visual
        self.token_head = nn.Linear(hidden, teacher_dim)
        self.embed_head = nn.Linear(hidden, embed_dim)

    def merged_tokens(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Processor outputs for `B` same-size images -> `[B, T, hidden]` merged visual tokens (what the LM reads)."""
        merged = self.visual(pixel_values, grid_thw=grid_thw).pooler_output  # [B * T, hidden]
        return merged.reshape(grid_thw.shape[0], -1, merged.shape[-1])

    def forward(self, pixel_values: Tensor, grid_thw: Tensor) -> tuple[Tensor, Tensor]:
        """-> (`[B, T, teacher_dim]` predicted teacher tokens, `[B, embed_dim]` L2-normalised image embedding)."""
        tokens = self.merged_tokens(pixel_values, grid_thw)
        return self.token_head(tokens), F.normalize(self.embed_head(tokens.mean(dim=1)), dim=-1)


def distill_loss(pred_tokens: Tensor, teacher_tokens: Tensor, image_emb: Tensor, text_emb: Tensor,
                 temperature: float, contrastive_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Stage 1's loss: token cosine regression plus a symmetric image-caption InfoNCE.

    Args:
        pred_tokens, teacher_tokens: `[B, T, C]`.
        image_emb, text_emb: `[B, d]` L2-normalised; row i of each is a matching image-caption pair.

    Returns:
        (total, token term, contrastive term), each a scalar.
    """
    token = (1 - F.cosine_similarity(pred_tokens, teacher_tokens, dim=-1)).mean()
    logits = image_emb @ text_emb.T / temperature  # [B, B]
    target = torch.arange(len(logits), device=logits.device)
    contrastive = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return token + contrastive_weight * contrastive, token, contrastive


def caption_inputs(processor, prompt: str, captions: Sequence[str], images: Sequence[Image.Image]):
    """Processor inputs for captioning in the reranker's prompt, and `[B, L]` labels (-100 off the caption).

    Each text is the reranker's user turn with the caption as the query, closed by `<|im_end|>` (no generation
    prompt): the loss covers the caption's tokens and that `<|im_end|>`. With left padding every sequence ends
    with the caption, `<|im_end|>`, `\\n`, so the caption's positions are counted from the end.
    """
    tokenizer = processor.tokenizer
    texts = [processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.format(query=c)}]}],
        tokenize=False) for c in captions]
    inputs = processor(text=texts, images=list(images), padding=True, return_tensors="pt")
    labels = torch.full_like(inputs["input_ids"], -100)
    for i, caption in enumerate(captions):
        # In the prompt the caption follows a space; byte-level BPE splits at that space, so this counts its tokens.
        n = len(tokenizer.encode(" " + caption, add_special_tokens=False)) + 1  # + <|im_end|>
        labels[i, -1 - n:-1] = inputs["input_ids"][i, -1 - n:-1]
    return inputs, labels


def caption_loss(model: Qwen2VLForConditionalGeneration, inputs, labels: Tensor) -> Tensor:
    """Next-token cross-entropy on the labelled positions (`labels` `[B, L]`, -100 ignored)."""
    logits = model(**inputs, use_cache=False).logits  # [B, L, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def matching_loss(reranker: MLLMReranker, data: ImageTextDataset, captions: Sequence[str],
                  images: Sequence[Image.Image], cap_rows: Sequence[int], img_rows: Sequence[int],
                  image_size: int, twins: bool = True) -> Tensor:
    """The reranker's SFT loss on `B` captions, each with its own image, the next caption's image and (with
    `twins`) its image's near-duplicate, the synthetic benchmark's minimal pair (a colour, shape or place changed).

    Args:
        captions, images: `B` captions and their own (resized) images; `cap_rows`, `img_rows` their rows in `data`.

    A negative that satisfies the caption anyway (`data.pair_relevance`, from the scene graphs) is labelled
    True, so the loss never teaches a wrong answer. An image without a twin gets the caption after next's image.
    """
    n = len(captions)
    neg_rows = [img_rows[(i + 1) % n] for i in range(n)]
    if twins:
        twin = data.near_duplicates
        neg_rows += [int(twin[r]) if twin is not None and int(twin[r]) >= 0 else img_rows[(i + 2) % n]
                     for i, r in enumerate(img_rows)]
    caps = list(cap_rows) * (len(neg_rows) // n)
    relevant = torch.ones(n + len(neg_rows))
    if data.pair_relevance is not None:
        relevant[n:] = data.pair_relevance(torch.tensor(caps), torch.tensor(neg_rows)).float()
    else:
        relevant[n:] = 0
    negatives = _resized(data.images, neg_rows, image_size)
    out = reranker.logits_for(list(captions) * (1 + len(neg_rows) // n), list(images) + negatives)
    return sft_loss(out.label_logits, relevant)


def _resized(images, rows: Sequence[int], size: int) -> list[Image.Image]:
    return [images[r].convert("RGB").resize((size, size), Image.BICUBIC) for r in rows]


def _sample(rng: random.Random, data: ImageTextDataset, caption_image: list[int], batch: int, size: int
            ) -> tuple[list[int], list[int], list[Image.Image]]:
    """`batch` distinct caption rows, their image rows, and those images resized for the VLM."""
    cap_rows = rng.sample(range(len(caption_image)), batch)
    img_rows = [caption_image[c] for c in cap_rows]
    return cap_rows, img_rows, _resized(data.images, img_rows, size)


def pretrain_vlm(folder: str | Path, data: ImageTextDataset, first_stage: str, first_stage_checkpoint: str | Path,
                 config: PretrainConfig | None = None, log: Callable[[str], None] = print,
                 log_every: int = 50) -> dict:
    """Build the tiny Qwen2-VL, pretrain it (distillation, then captioning) on `data`, save it to `folder`.

    Args:
        folder: where the VLM goes (`save_pretrained` model + processor).
        data: the synthetic train split (images and their captions; `caption_image[i]` is caption i's image).
        first_stage, first_stage_checkpoint: the teacher (an open_clip model name and its trained weights).
        config: `PretrainConfig`.
        log: where progress lines go.

    Returns:
        `{"distill": [(step, loss, token, contrastive)], "caption": [(step, loss)], "seconds": {...}}`, the
        losses averaged over each `log_every` steps.
    """
    config = config or PretrainConfig()
    rng = random.Random(config.seed)
    captions = [data.captions[i] for i in range(len(data.captions))]
    caption_image = [int(r) for r in data.caption_image]
    # A tokenizer trained on the captions makes their words single tokens, as a real model's vocabulary would.
    folder = build_tiny_vlm(folder, seed=config.seed, corpus=captions)
    # The reranker wrapper gives the True/False forward pass of reranker training; its model is trained in place.
    reranker = MLLMReranker(folder, device="cpu", dtype="float32")
    model, processor = reranker.model.train(), reranker.processor
    hidden = model.config.get_text_config().hidden_size
    grid = config.image_size // (model.config.vision_config.patch_size * model.config.vision_config.spatial_merge_size)
    teacher = Teacher(first_stage, first_stage_checkpoint, config.feature_index, grid)
    history: dict = {"distill": [], "caption": [], "itm": [], "seconds": {}}

    # Stage 1: the vision tower learns the first stage's view of each image.
    start = time.perf_counter()
    text_emb = teacher.text_embeddings(captions)  # [N captions, d]
    probe = teacher.image_tokens([data.images[0]])
    student = VisionStudent(model.model.visual, hidden, probe.shape[-1], text_emb.shape[-1]).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.distill_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, config.distill_steps))
    window = []
    for step in range(config.distill_steps):
        cap_rows, img_rows, images = _sample(rng, data, caption_image, config.distill_batch, config.image_size)
        vis = processor.image_processor(images=images, return_tensors="pt")
        pred, image_emb = student(vis["pixel_values"], vis["image_grid_thw"])
        targets = teacher.image_tokens([data.images[r] for r in img_rows])
        # Two captions of the same image in one batch would be false negatives; with 50,000 captions it is rare.
        loss, token, contrastive = distill_loss(pred, targets, image_emb, text_emb[cap_rows], config.temperature,
                                                config.contrastive_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        window.append((loss.item(), token.item(), contrastive.item()))
        if (step + 1) % log_every == 0 or step + 1 == config.distill_steps:
            mean = [sum(v) / len(window) for v in zip(*window)]
            history["distill"].append((step + 1, *mean))
            log(f"distill step {step + 1}: loss {mean[0]:.4f} token {mean[1]:.4f} contrastive {mean[2]:.4f}")
            window = []
    history["seconds"]["distill"] = time.perf_counter() - start

    # Stage 2: the language model learns to read the (now frozen) visual tokens with the caption words.
    start = time.perf_counter()
    model.model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.caption_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, config.caption_steps))
    window = []
    for step in range(config.caption_steps):
        cap_rows, img_rows, images = _sample(rng, data, caption_image, config.caption_batch, config.image_size)
        batch_captions = [captions[c] for c in cap_rows]
        inputs, labels = caption_inputs(processor, DEFAULT_PROMPT, batch_captions, images)
        loss = lm = caption_loss(model, inputs, labels)
        itm = torch.zeros(())
        if config.itm_weight > 0:
            itm = matching_loss(reranker, data, batch_captions, images, cap_rows, img_rows, config.image_size,
                                config.itm_twins)
            loss = lm + config.itm_weight * itm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        window.append((lm.item(), itm.item()))
        if (step + 1) % log_every == 0 or step + 1 == config.caption_steps:
            mean = [sum(v) / len(window) for v in zip(*window)]
            history["caption"].append((step + 1, mean[0]))
            history["itm"].append((step + 1, mean[1]))
            log(f"caption step {step + 1}: loss {mean[0]:.4f} itm {mean[1]:.4f}")
            window = []
    history["seconds"]["caption"] = time.perf_counter() - start

    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return history
