"""The VLM embedders: DSE-Qwen2 and Qwen3-VL-Embedding (one vector per input), ColQwen2 / ColQwen2.5 and ColPali
(one vector per token, scored by MaxSim).

Each builds its inputs as the authors' code does (facts carried over, code written here):

- DSE-Qwen2 (MrLight/dse-qwen2-2b-mrl-v1; Tevatron's `examples/dse/qwen`, `EncodeCollator` and `DSEModel`, the code
  that trained and encodes it): a Qwen2-VL user turn (the chat template adds its default system turn) with an image
  and a text, no generation prompt, then `<|endoftext|>`; the query turn holds a black 28x28 placeholder image
  resized by qwen-vl-utils (`resized_height = resized_width = 1`) to 56x56, and `Query: {query}`; the document turn
  holds the page resized to 748x748 requested (756x756 after rounding to 28) and `What is shown in this image?`.
  The processor keeps 28*28 to 2560*28*28 pixels, left padding. The embedding is the last position's final hidden
  state (`pooling eos`), L2-normalised; `dim` cuts it first (Matryoshka, as the model's name says). The model card's
  own snippet (not readable here) is reported to use the generation prompt and 680x680 pages: both are options.
- Qwen3-VL-Embedding (QwenLM/Qwen3-VL-Embedding, `src/models/qwen3_vl_embedding.py`): a system turn with the
  instruction (default `Represent the user's input.`; a '.' is added when it ends without punctuation), a user turn
  with the image(s) first and the text after (`NULL` when empty), the generation prompt; images resized by
  qwen-vl-utils at factor 32 into 4-1800 tokens, the processor told `do_resize=False`; the hidden state at the last
  attended position, L2-normalised.
- ColQwen2 / ColQwen2.5 (colpali-engine `ColQwen2Processor` / `ColQwen2`): documents are the prompt
  `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>` with
  the image; queries are the text followed by ten `<|endoftext|>` augmentation tokens; left padding. Every token's
  final hidden state goes through `custom_text_proj` (to 128 values) and is L2-normalised.
- ColPali (colpali-engine `ColPaliProcessor` / `ColPali`): documents are `<image><bos>Describe the image.` through the
  PaliGemma processor (which expands `<image>` to the image's tokens and returns `token_type_ids`, so the prefix
  attends bidirectionally as in PaliGemma); queries are `<bos>` + text + ten `<pad>` augmentation tokens through
  the tokenizer alone (no `token_type_ids`). Projection and normalisation as ColQwen2.

Multi-vector outputs keep only attended tokens (colpali-engine zeroes the padded ones; MaxSim over the rest is
the same whenever a query has a positive similarity).
"""

from __future__ import annotations

import unicodedata

import torch
from PIL import Image
from torch import Tensor

from mmrerank.core.resize import smart_resize, to_rgb
from mmrerank.retrieval.vlm.base import BatchedEncoder, last_token

# DSE's card: the processor's pixel limits and the two requested sizes (qwen-vl-utils rounds them to factor 28).
DSE_MIN_PIXELS, DSE_MAX_PIXELS = 28 * 28, 2560 * 28 * 28
DSE_QUERY_SIZE, DSE_DOCUMENT_SIZE = 1, 748
DSE_QUERY_PREFIX, DSE_DOCUMENT_PROMPT = "Query: ", "What is shown in this image?"
# Qwen3-VL-Embedding's constants (factor 32 = 16-pixel patches x 2x2 merge).
QWEN3_FACTOR, QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS = 32, 4 * 32 * 32, 1800 * 32 * 32
QWEN3_DEFAULT_INSTRUCTION = "Represent the user's input."
# colpali-engine's prompts.
COLQWEN_DOCUMENT_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                           "<|im_end|><|endoftext|>")
COLPALI_DOCUMENT_PROMPT = "<image><bos>Describe the image."
N_AUGMENTATION = 10


def _qwen_resized(image: Image.Image, height: int, width: int, factor: int, min_pixels: int | None = None,
                  max_pixels: int | None = None) -> Image.Image:
    """qwen-vl-utils' `fetch_image`: RGB, resized (bicubic) to `smart_resize` of the requested (height, width)."""
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return to_rgb(image).resize((w, h), Image.BICUBIC)


def _single(processed) -> dict[str, Tensor]:
    """A processor's output for one input, without what the model does not take (`labels`)."""
    return {k: torch.as_tensor(v) for k, v in processed.items() if k != "labels"}


class DSEEmbedder(BatchedEncoder):
    """DSE-Qwen2: one vector per query or page, from a Qwen2-VL (`Qwen2VLForConditionalGeneration`).

    Args:
        model, processor: the loaded model and its `Qwen2VLProcessor` (pixel limits as the card sets them).
        dim: Matryoshka cut (None: the full hidden size).
        batch_size, max_tokens_per_batch: rows and padded tokens per forward pass.
        document_size, generation_prompt: the page's requested side (748, Tevatron's) and whether the chat template's
            generation prompt is added (False, Tevatron's); 680 and True are the card's reported values.
    """

    def __init__(self, model, processor, dim: int | None = None, batch_size: int = 8,
                 max_tokens_per_batch: int | None = None, document_size: int = DSE_DOCUMENT_SIZE,
                 generation_prompt: bool = False) -> None:
        super().__init__(model, processor, batch_size, max_tokens_per_batch)
        self.dim = dim or model.config.text_config.hidden_size
        self.document_size, self.generation_prompt = document_size, generation_prompt
        self.placeholder = Image.new("RGB", (28, 28))

    def _turn(self, image: Image.Image, size: int, text: str) -> dict[str, Tensor]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=self.generation_prompt)
        image = _qwen_resized(image, size, size, 28)
        return _single(self.processor(text=[prompt + "<|endoftext|>"], images=[image], return_tensors="pt"))

    def _query_inputs(self, text: str) -> dict[str, Tensor]:
        return self._turn(self.placeholder, DSE_QUERY_SIZE, DSE_QUERY_PREFIX + text)

    def _document_inputs(self, image: Image.Image, text: str | None) -> dict[str, Tensor]:
        return self._turn(image, self.document_size, DSE_DOCUMENT_PROMPT)

    def _embed(self, inputs: dict[str, Tensor]) -> Tensor:
        hidden = self.model.model(**inputs, use_cache=False).last_hidden_state  # [B, L, h]
        pooled = last_token(hidden, inputs["attention_mask"])[:, :self.dim]
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


class Qwen3VLEmbedder(BatchedEncoder):
    """Qwen3-VL-Embedding: one vector per query or page (image first, then its text when given).

    Args:
        query_instruction: the system turn for queries (documents get `Represent the user's input.`).
        dim: Matryoshka cut (None: the full hidden size).
    """

    def __init__(self, model, processor, query_instruction: str | None = None, dim: int | None = None,
                 batch_size: int = 8, max_tokens_per_batch: int | None = None, min_pixels: int = QWEN3_MIN_PIXELS,
                 max_pixels: int = QWEN3_MAX_PIXELS) -> None:
        super().__init__(model, processor, batch_size, max_tokens_per_batch)
        self.query_instruction = query_instruction or QWEN3_DEFAULT_INSTRUCTION
        self.dim = dim or model.config.text_config.hidden_size
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    @staticmethod
    def _instruction(text: str) -> str:
        text = text.strip()
        return text if text and unicodedata.category(text[-1]).startswith("P") else text + "."

    def _conversation(self, instruction: str, image: Image.Image | None, text: str | None) -> dict[str, Tensor]:
        content = [{"type": "image"}] if image is not None else []
        content += [{"type": "text", "text": text}] if text else []
        content = content or [{"type": "text", "text": "NULL"}]
        conversation = [{"role": "system", "content": [{"type": "text", "text": self._instruction(instruction)}]},
                        {"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images = None
        if image is not None:
            images = [_qwen_resized(image, image.height, image.width, QWEN3_FACTOR, self.min_pixels, self.max_pixels)]
        return _single(self.processor(text=[prompt], images=images, do_resize=False, return_tensors="pt"))

    def _query_inputs(self, text: str) -> dict[str, Tensor]:
        return self._conversation(self.query_instruction, None, text)

    def _document_inputs(self, image: Image.Image, text: str | None) -> dict[str, Tensor]:
        return self._conversation(QWEN3_DEFAULT_INSTRUCTION, image, text)

    def _embed(self, inputs: dict[str, Tensor]) -> Tensor:
        hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        pooled = last_token(hidden, inputs["attention_mask"])[:, :self.dim]
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


class ColVisionEmbedder(BatchedEncoder):
    """ColQwen2 / ColQwen2.5 / ColPali: one 128-value vector per token (late interaction).

    Args:
        model: the backbone (`Qwen2VLModel` / `Qwen2_5_VLModel`, or `PaliGemmaForConditionalGeneration`).
        projection: `custom_text_proj`, `nn.Linear(hidden, 128)`.
        family: "colqwen" or "colpali" (their prompts and query tokens differ).
        query_attention: ColPali only. "bidirectional" (default): every query token attends to every other, as
            PaliGemma attends over its prefix; what transformers 4 (under which the ColPali checkpoints were trained)
            computes for colpali-engine's query batches, and what colpali-engine 0.3.18 under transformers 5 gives
            for a query in a batch without padding. "causal": what colpali-engine 0.3.18 under transformers 5 gives
            for a query in a padded batch (no `token_type_ids`, so transformers 5 builds a causal mask; with no
            padding at all sdpa gets no mask and PaliGemma's text model, not marked causal, attends both ways).
            The two differ by up to ~0.3 per value on the tiny model (tests/fixtures/vlm_parity/SOURCE.md). Pages
            always get the processor's `token_type_ids` (one bidirectional block), in both.
    """

    multi_vector = True

    def __init__(self, model, processor, projection: torch.nn.Linear, family: str, batch_size: int = 8,
                 max_tokens_per_batch: int | None = None, query_attention: str = "bidirectional") -> None:
        if family not in ("colqwen", "colpali"):
            raise ValueError(f"family={family!r}: expected 'colqwen' or 'colpali'")
        if query_attention not in ("bidirectional", "causal"):
            raise ValueError(f"query_attention={query_attention!r}: expected 'bidirectional' or 'causal'")
        self.query_attention = query_attention
        super().__init__(model, processor, batch_size, max_tokens_per_batch)
        self.projection = projection.eval()
        self.family = family
        self.dim = projection.out_features

    def _query_inputs(self, text: str) -> dict[str, Tensor]:
        if self.family == "colpali":
            tok = self.tokenizer  # the PaliGemma processor set add_bos_token False: the bos is written out
            augmented = tok.bos_token + text + tok.pad_token * N_AUGMENTATION
            inputs = _single(tok([augmented], return_token_type_ids=False, return_tensors="pt"))
            # PaliGemma's token types: 0 = one bidirectional block (the prefix), 1 = causal. Always given, so the mask
            # does not depend on whether the batch happens to be padded (see `query_attention`).
            fill = 0 if self.query_attention == "bidirectional" else 1
            inputs["token_type_ids"] = torch.full_like(inputs["input_ids"], fill)
            return inputs
        return _single(self.processor(text=[text + "<|endoftext|>" * N_AUGMENTATION], return_tensors="pt"))

    def _document_inputs(self, image: Image.Image, text: str | None) -> dict[str, Tensor]:
        prompt = COLPALI_DOCUMENT_PROMPT if self.family == "colpali" else COLQWEN_DOCUMENT_PROMPT
        return _single(self.processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt"))

    def _hidden(self, inputs: dict[str, Tensor]) -> Tensor:
        if self.family == "colpali":
            if "pixel_values" in inputs:
                inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(self.model.dtype)}
            return self.model(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
        return self.model(**inputs, use_cache=False).last_hidden_state

    def _embed(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        proj = self.projection(self._hidden(inputs))  # [B, L, 128]
        proj = proj / proj.norm(dim=-1, keepdim=True)
        mask = inputs["attention_mask"].bool()
        return [row[keep] for row, keep in zip(proj, mask)]

