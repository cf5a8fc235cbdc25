"""BLIP and BLIP-2 image-text matching (ITM) rerankers, scored as transformers' model cards or as LAVIS score them.

Each pair is one caption and one image, in either order: t2i pairs a caption query with candidate images, i2t an
image query with candidate captions. Two protocols (the `protocol` option):

- `"hf"` (default): the model card's usage, `softmax(ITM logits)[:, 1]`, the probability that the pair matches.
- `"lavis"`: LAVIS's retrieval evaluation (`compute_sim_matrix`), `ITM logit[:, 1] + ITC cosine similarity`, the
  score LAVIS ranks a first stage's top `k_test` by (here: the top `rerank_depth` of mmrerank's first stage; LAVIS
  uses BLIP's own ITC ranking as its first stage, so only the scores of the reranked pairs carry over).

Which output each protocol reads (checked against transformers 5.24 `models/blip/modeling_blip.py`
`BlipForImageTextRetrieval.forward` and `models/blip_2/modeling_blip_2.py` `Blip2ForImageTextRetrieval.forward`, and
salesforce/LAVIS at 506965b9c4a18c1e565bd32acaccabe0198433f7: `lavis/models/albef_models/__init__.py`
`compute_sim_matrix` (which `blip_models/blip_retrieval.py` imports), `lavis/models/blip2_models/blip2.py`
`compute_sim_matrix` and `blip2_qformer.py` `compute_itm`):

- BLIP: both read the text encoder's output at position 0, but the token fed there differs. transformers feeds the
  tokenizer's `[CLS]` as the card's `processor(images, text)` makes it; LAVIS overwrites position 0 with `[ENC]`
  (`text_ids[:, 0] = tokenizer.enc_token_id`), the token BLIP's ITM head was fine-tuned with (`blip_retrieval.py`
  `forward`). The ITC side reads position 0 of the text-only pass with `[CLS]` in both.
- BLIP-2: both read the Q-Former outputs at the 32 query positions (never the text positions) and average the ITM
  head over them; transformers returns the averaged two logits (the card then applies a softmax), LAVIS takes logit
  1 of each query and averages (the same number: the mean is linear). ITC: the highest of the 32 query-text cosine
  similarities, as both compute it.
Inputs, as each protocol's code prepares them (checked by running it: tests/fixtures/parity/blip*_itm_*/SOURCE.md):

- Images: both resize with PIL's bicubic filter (transformers 4's `BlipImageProcessor`; LAVIS's `blip_image_eval`,
  torchvision's `Resize` on a PIL image), so the image processor is loaded on its PIL backend under transformers 5.
- Captions: the card passes them unchanged (the tokenizer lower-cases); LAVIS's datasets apply `blip_caption`
  (`pre_caption`) and `compute_sim_matrix` cuts at 35 word pieces.
- LAVIS's ViT uses LayerNorm eps 1e-6, the hub's BLIP configs 1e-5: the `"lavis"` protocol uses LAVIS's.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mmrerank.core.device import resolve_device
from mmrerank.core.items import RetrievalTask
from mmrerank.rerankers.base import Reranker

PROTOCOLS = ("hf", "lavis")
# LAVIS compute_sim_matrix tokenizes with padding="max_length", truncation=True, max_length=35.
LAVIS_MAX_TEXT_LEN = 35
# LAVIS BlipCaptionProcessor (lavis/processors/blip_processors.py) keeps at most max_words=50 words.
LAVIS_MAX_WORDS = 50
# LAVIS's ViT (lavis/models/vit.py) normalises with LayerNorm(eps=1e-6); the hub's BLIP configs keep
# BlipVisionConfig's default 1e-5 (the conversion script built them from defaults).
LAVIS_VIT_LAYER_NORM_EPS = 1e-6
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pre_caption(caption: str, max_words: int = LAVIS_MAX_WORDS) -> str:
    """A caption as LAVIS's `blip_caption` text processor gives it to the model (its retrieval datasets apply it).

    Lower case; each of `. ! " ( ) * # : ; ~` becomes a space; runs of whitespace become one space; the ends are
    stripped; at most `max_words` words are kept.
    """
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def split_pairs(queries: Sequence[Any], candidates: Sequence[Any]) -> tuple[list[str], list[Image.Image]]:
    """Each pair's caption and image, whichever side each is on.

    Raises:
        ValueError: the two lists differ in length.
        TypeError: a pair is not one `str` and one PIL image (the message names the pair and the types).
    """
    if len(queries) != len(candidates):
        raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates; score pairs them one to one")
    texts, images = [], []
    for i, (query, candidate) in enumerate(zip(queries, candidates)):
        if isinstance(query, str) and isinstance(candidate, Image.Image):
            texts.append(query)
            images.append(candidate)
        elif isinstance(query, Image.Image) and isinstance(candidate, str):
            texts.append(candidate)
            images.append(query)
        else:
            raise TypeError(f"pair {i}: BLIP ITM scores a caption (str) against a PIL image, got "
                            f"{type(query).__name__} and {type(candidate).__name__} (pages and image-image pairs are "
                            "not supported)")
    return texts, images


def unique_rows(items: Sequence[Any], key: Any = id) -> tuple[list[Any], Tensor]:
    """The distinct items (first occurrence order, by `key`) and each item's row among them, `[len(items)]` long."""
    rows: dict[Any, int] = {}
    distinct, index = [], []
    for item in items:
        k = key(item)
        if k not in rows:
            rows[k] = len(distinct)
            distinct.append(item)
        index.append(rows[k])
    return distinct, torch.tensor(index, dtype=torch.long)


def fetch_rows(items: Sequence[Any], rows: Tensor) -> list[Any]:
    """`items[r]` for each row, reading each distinct row once (the same object for repeats, so images decode once)."""
    cache: dict[int, Any] = {}
    out = []
    for r in rows.tolist():
        if r not in cache:
            cache[r] = items[r]
        out.append(cache[r])
    return out


def load_processor(name_or_path: str | Path, processor_path: str | Path | None) -> Any:
    """The checkpoint's processor, or the one at `processor_path` when the checkpoint has no processor files, with
    its image processor on PIL (`pil_image_processor`).

    Raises:
        OSError: neither place has a processor (the message names both).
    """
    from transformers import AutoProcessor

    try:
        processor, source = AutoProcessor.from_pretrained(name_or_path), name_or_path
    except OSError as err:
        if processor_path is None:
            raise OSError(f"{name_or_path} has no processor files ({err}); pass processor_path=<a folder or hub id "
                          "with the same tokenizer and image processor>") from err
        try:
            processor, source = AutoProcessor.from_pretrained(processor_path), processor_path
        except OSError as err2:
            raise OSError(f"no processor in {name_or_path} nor in processor_path={processor_path}: {err2}") from err2
    processor.image_processor = pil_image_processor(source)
    return processor


def pil_image_processor(source: str | Path) -> Any:
    """The image processor saved at `source`, resizing with PIL whatever the transformers version.

    Both protocols resize with PIL's bicubic filter: transformers 4's `BlipImageProcessor` (the cards' code) and
    LAVIS's `blip_image_eval` (torchvision's `Resize` on a PIL image). transformers 5 defaults to its torchvision
    backend, whose bicubic antialiasing differs (scores moved by up to 1.5e-3 on the parity fixtures);
    `backend="pil"` (5.x) / `use_fast=False` (4.x) gives the PIL pixels exactly.
    """
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    return AutoImageProcessor.from_pretrained(source, **({"backend": "pil"} if major >= 5 else {"use_fast": False}))


class ITMReranker(Reranker):
    """The part BLIP and BLIP-2 share: pairs, batching, deduplication, tokenizing; subclasses run the model.

    Within a batch each distinct image is encoded once (a t2i candidate list has one caption and many images, an
    i2t one has one image and many captions), and each distinct caption tokenized once.

    Args:
        model: a `BlipForImageTextRetrieval` / `Blip2ForImageTextRetrieval`, already on its device.
        processor: its `BlipProcessor` / `Blip2Processor` (the tokenizer and image processor are used separately).
        protocol: `"hf"` or `"lavis"` (module docstring).
        max_text_len: word pieces per caption, special tokens included (default: 35 for `"lavis"`, as LAVIS; the
            model's position table for `"hf"`, which does not truncate in the card).
        batch_size: pairs per forward pass.
    """

    model_class: ClassVar[str]  # the transformers class name
    model_type: ClassVar[str]  # its config's model_type

    def __init__(self, model: nn.Module, processor: Any, protocol: str = "hf", max_text_len: int | None = None,
                 batch_size: int = 32) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.protocol, self.batch_size = model.eval(), processor, protocol, batch_size
        self.tokenizer, self.image_processor = processor.tokenizer, processor.image_processor
        positions = self.text_positions()
        self.max_text_len = min(max_text_len or (LAVIS_MAX_TEXT_LEN if protocol == "lavis" else positions), positions)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, protocol: str = "hf", device: str = "auto",
                        dtype: str = "float32", batch_size: int = 32, max_text_len: int | None = None,
                        processor_path: str | Path | None = None, **options: Any) -> ITMReranker:
        """Load a checkpoint folder or hub id (weights through transformers: safetensors, or a `.bin` that
        transformers reads with `weights_only=True`).

        Args:
            name_or_path: the checkpoint.
            device: `"auto"` (CUDA when there is one), `"cpu"`, `"cuda"`, ...
            dtype: `float32`, `float16` or `bfloat16` for the weights (BLIP-2's Q-Former stays float32, as
                transformers keeps it).
            processor_path: where to read the processor when `name_or_path` has none.
            protocol, batch_size, max_text_len: as the class.
            options: further constructor options (BLIP: `enc_token_id`).

        Raises:
            ValueError: the checkpoint is not of this class's model type, or an unknown `dtype`.
        """
        import transformers
        from transformers import AutoConfig

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type != cls.model_type:
            raise ValueError(f"{name_or_path} is a {config.model_type!r} checkpoint; {cls.__name__} loads "
                             f"{cls.model_type!r} ({cls.model_class})")
        cls.check_config(config, name_or_path)
        model = getattr(transformers, cls.model_class).from_pretrained(name_or_path, dtype=DTYPES[dtype])
        processor = load_processor(name_or_path, processor_path)
        return cls(model.to(resolve_device(device)), processor, protocol=protocol, max_text_len=max_text_len,
                   batch_size=batch_size, **options)

    @classmethod
    def check_config(cls, config: Any, name_or_path: str | Path) -> None:
        """Raise `ValueError` for a config this class cannot score with (default: accept)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, text: str) -> str:
        """The caption as the model reads it (before tokenization): LAVIS's `pre_caption`, or unchanged for `"hf"`."""
        return pre_caption(text) if self.protocol == "lavis" else text

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """`[CLS] caption [SEP]` word pieces, right-padded: `input_ids`, `attention_mask`, each `[T, L]` on the device.

        Right padding whatever the tokenizer's setting: BERT-style absolute positions put the caption at positions
        0.. only then, so a padded batch scores as one pair at a time.
        """
        enc = self.tokenizer([self.render(t) for t in texts], padding="longest", truncation=True,
                             max_length=self.max_text_len, padding_side="right", return_token_type_ids=False,
                             return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def pixels(self, images: Sequence[Image.Image]) -> Tensor:
        """The image processor's `pixel_values` `[N, 3, H, W]`, on the device in the vision tower's dtype."""
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        values = self.image_processor(rgb, return_tensors="pt")["pixel_values"]
        return values.to(self.device, self.vision_dtype())

    @abstractmethod
    def text_positions(self) -> int:
        """How many text positions the model's position table has."""

    def vision_dtype(self) -> torch.dtype:
        """The dtype the vision tower computes in."""
        return self.model.vision_model.embeddings.patch_embedding.weight.dtype

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """`[N, 3, H, W]` -> the vision tower's output tokens `[N, P, D]` (what the text side cross-attends to).

        `last_hidden_state` is after `post_layernorm`: for BLIP-2, LAVIS's `ln_vision(visual_encoder(image))`."""
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    @abstractmethod
    def pair_scores(self, image_embeds: Tensor, image_index: Tensor, input_ids: Tensor, attention_mask: Tensor,
                    text_index: Tensor) -> Tensor:
        """Scores of the pairs `(image_embeds[image_index[i]], caption text_index[i])` under the protocol.

        Args:
            image_embeds: `[N, P, D]` from `encode_images`; image_index: `[B]` rows of it.
            input_ids, attention_mask: `[T, L]` from `tokenize`; text_index: `[B]` rows of them.

        Returns:
            `[B]` float32.
        """

    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """`[B]` float32 on the CPU: each pair's caption against its image, `batch_size` pairs per forward pass."""
        texts, images = split_pairs(queries, candidates)
        out = [self._score_batch(texts[s:s + self.batch_size], images[s:s + self.batch_size])
               for s in range(0, len(texts), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        # Read each distinct row once: an i2t batch repeats its query image, which would otherwise decode per pair.
        return self.score(fetch_rows(task.queries, query_rows), fetch_rows(task.corpus, candidate_rows))

    @torch.inference_mode()
    def _score_batch(self, texts: list[str], images: list[Image.Image]) -> Tensor:
        distinct_images, image_index = unique_rows(images)
        distinct_texts, text_index = unique_rows(texts, key=str)
        embeds = self.encode_images(self.pixels(distinct_images))
        ids, mask = self.tokenize(distinct_texts)
        scores = self.pair_scores(embeds, image_index.to(self.device), ids, mask, text_index.to(self.device))
        return scores.float().cpu()


class BlipITMReranker(ITMReranker):
    """transformers `BlipForImageTextRetrieval` (`Salesforce/blip-itm-{base,large}-{coco,flickr}`).

    With protocol `"lavis"` the vision tower's LayerNorms are set to LAVIS's eps (1e-6, `LAVIS_VIT_LAYER_NORM_EPS`)
    in place: with the config's 1e-5 the tiny parity model's scores moved by 9e-5.

    Args:
        enc_token_id: the `[ENC]` id LAVIS writes at position 0 (protocol `"lavis"` only). Default: the tokenizer's
            `[ENC]` if it has one, else `[DEC] + 1` -- the hub tokenizers have neither, but LAVIS's `init_tokenizer`
            adds `[DEC]` then `[ENC]` to bert-base-uncased (30522, 30523), and the config's `bos_token_id` is `[DEC]`.
        (the others: `ITMReranker`.)
    """

    model_class, model_type = "BlipForImageTextRetrieval", "blip"

    def __init__(self, model: nn.Module, processor: Any, protocol: str = "hf", max_text_len: int | None = None,
                 batch_size: int = 32, enc_token_id: int | None = None) -> None:
        super().__init__(model, processor, protocol=protocol, max_text_len=max_text_len, batch_size=batch_size)
        self.enc_token_id = enc_token_id if enc_token_id is not None else self._default_enc_token_id()
        if protocol == "lavis":
            for module in self.model.vision_model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.eps = LAVIS_VIT_LAYER_NORM_EPS

    def _default_enc_token_id(self) -> int:
        known = self.tokenizer.convert_tokens_to_ids("[ENC]")
        if known is not None and known != self.tokenizer.unk_token_id:
            return int(known)
        config = self.model.config.text_config
        if config.bos_token_id is None or config.bos_token_id + 1 >= config.vocab_size:
            raise ValueError(f"cannot place [ENC]: the tokenizer has none and [DEC] (bos_token_id "
                             f"{config.bos_token_id}) + 1 is not below vocab_size {config.vocab_size}; pass "
                             "enc_token_id")
        return config.bos_token_id + 1

    def text_positions(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def pair_scores(self, image_embeds: Tensor, image_index: Tensor, input_ids: Tensor, attention_mask: Tensor,
                    text_index: Tensor) -> Tensor:
        model, image = self.model, image_embeds[image_index]
        ids, mask = input_ids[text_index], attention_mask[text_index]
        if self.protocol == "lavis":
            ids = ids.clone()
            ids[:, 0] = self.enc_token_id  # LAVIS: [ENC] in place of [CLS] for the multimodal pass
        image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                                    encoder_attention_mask=image_mask).last_hidden_state
        logits = model.itm_head(hidden[:, 0]).float()  # [B, 2]: position 0 (the [CLS] or [ENC] output)
        if self.protocol == "hf":
            return logits.softmax(dim=-1)[:, 1]
        # ITC: the text-only pass with [CLS] at position 0, against the image's class-token output
        text = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text_feat = F.normalize(model.text_proj(text[:, 0]).float(), dim=-1)  # [T, E]
        image_feat = F.normalize(model.vision_proj(image_embeds[:, 0]).float(), dim=-1)  # [N, E]
        return logits[:, 1] + (text_feat[text_index] * image_feat[image_index]).sum(dim=-1)


class Blip2ITMReranker(ITMReranker):
    """transformers `Blip2ForImageTextRetrieval` (`Salesforce/blip2-itm-vit-g`): the Q-Former's ITM head.

    The processor's `<image>` placeholder tokens (newer `Blip2Processor` uploads set `num_query_tokens`) are not
    used: the caption is tokenized alone and the query tokens are prepended as embeddings, which is what the model's
    forward does after it strips the placeholders.
    """

    model_class, model_type = "Blip2ForImageTextRetrieval", "blip-2"

    @classmethod
    def check_config(cls, config: Any, name_or_path: str | Path) -> None:
        if not getattr(config.qformer_config, "use_qformer_text_input", False):
            raise ValueError(f"{name_or_path}: qformer_config.use_qformer_text_input is false, so the Q-Former has no "
                             "text layers and cannot compute ITM; an image-text retrieval checkpoint sets it")

    def text_positions(self) -> int:
        return self.model.config.qformer_config.max_position_embeddings

    def _qformer(self, embeds: Tensor, query_length: int, mask: Tensor | None = None,
                 image: Tensor | None = None) -> Tensor:
        image_mask = None if image is None else torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        return self.model.qformer(query_embeds=embeds, query_length=query_length, attention_mask=mask,
                                  encoder_hidden_states=image, encoder_attention_mask=image_mask).last_hidden_state

    def pair_scores(self, image_embeds: Tensor, image_index: Tensor, input_ids: Tensor, attention_mask: Tensor,
                    text_index: Tensor) -> Tensor:
        model, image = self.model, image_embeds[image_index]
        queries = model.query_tokens.expand(len(image), -1, -1)
        n_query = queries.shape[1]
        embeds = model.embeddings(input_ids=input_ids[text_index], query_embeds=queries)  # [B, Q + L, H]
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask[text_index]], dim=1)
        hidden = self._qformer(embeds, n_query, mask, image)[:, :n_query]  # the query positions only
        logits = model.itm_head(hidden.to(model.itm_head.weight.dtype)).float().mean(dim=1)  # [B, 2]
        if self.protocol == "hf":
            return logits.softmax(dim=-1)[:, 1]
        # ITC: the best of the Q query outputs (image-only pass) against the caption's [CLS] output (text-only pass)
        image_queries = self._qformer(model.query_tokens.expand(len(image_embeds), -1, -1), n_query,
                                      image=image_embeds)
        image_proj = model.vision_projection(image_queries.to(model.vision_projection.weight.dtype))
        image_feat = F.normalize(image_proj.float(), dim=-1)  # [N, Q, E]
        text = self._qformer(model.embeddings(input_ids=input_ids), 0, attention_mask)[:, 0]
        text_feat = F.normalize(model.text_projection(text.to(model.text_projection.weight.dtype)).float(), dim=-1)
        sims = torch.einsum("bqe,be->bq", image_feat[image_index], text_feat[text_index])
        return logits[:, 1] + sims.max(dim=1).values
