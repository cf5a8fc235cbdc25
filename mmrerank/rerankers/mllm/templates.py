"""How each published VLM reranker turns a (query, document) pair into its model's input: text and images.

A pair's two sides are `Content`s -- an image, a text, or both. A template renders them as the model's card does
and returns the text, with one `<|vision_start|><|image_pad|><|vision_end|>` per image (the processor expands each
into the image's visual tokens), and the images in the order their placeholders appear in the text.

- `MonoQwenTemplate` (lightonai/MonoQwen2-VL-v0.1): one chat turn, the document image then the prompt with the
  query, through the processor's chat template.
- `JinaTemplate` (jinaai/jina-reranker-m0): no chat template; `**Document**:` then `**Query**:`, each a text or
  an image.
- `YesNoTemplate` (Qwen/Qwen3-VL-Reranker-2B / -8B, vec-ai/lychee-rerank-mm): a system turn asking for "yes" or
  "no", then `<Instruct>`, `<Query>` and `<Document>` sections, each an image, a text or both.

A side the card does not support (a text document for MonoQwen2-VL, an image query for it, a document with both
an image and a text for jina) is a `ValueError` that names the template and what it accepts.

What the authors' code does with a document's text (`keeps_document_text`): Qwen3-VL-Reranker's `Qwen3VLReranker
.format_mm_content` and lychee-rerank-mm's card put a document's image and then its text, whole (no cut below the
model's 10240-token limit), so the `yes_no` template always scores both. MonoQwen2-VL's card and `rerankers`'
MonoVLMRanker read a document's image alone, and jina-reranker-m0's `compute_score` takes a document that is a text
or an image, so for those the text that comes with an image is used only on request (`MLLMReranker(use_ocr=True)`,
an mmrerank option). None of these cleans or rewrites a query's or a document's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

# What a processor of the Qwen-VL family replaces by an image's visual tokens.
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

# MonoQwen2-VL-v0.1's prompt, from its model card (lightonai/MonoQwen2-VL-v0.1 README, "How to use"):
# "Assert the relevance of the previous image document to the following query, answer True or False. The query
# is: {query}".
MONOQWEN_PROMPT = ("Assert the relevance of the previous image document to the following query, answer True or False. "
                   "The query is: {query}")
# With `use_ocr=True` the page's OCR text goes before that prompt (an mmrerank option, not in the card).
MONOQWEN_OCR_PREFIX = "The document text is: {ocr}\n"

# The system turn of Qwen3-VL-Reranker (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_reranker.py,
# `format_mm_instruction`, and examples/reranker_template.jinja, commit 8ce3aab1fbcc7b7143b094f0b2005dd89e7246b9),
# which lychee-rerank-mm shares.
YES_NO_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
# Qwen3-VL-Reranker's default instruction (`Qwen3VLReranker.__init__`, same file and commit).
QWEN3_VL_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."

KINDS = ("text", "image", "image+text")


@dataclass(frozen=True)
class Content:
    """One side of a pair: an image, a text, or both (at least one).

    Attributes:
        image: a PIL image, or None.
        text: a non-empty text, or None.
    """

    image: Image.Image | None = None
    text: str | None = None

    @property
    def kind(self) -> str:
        """`"text"`, `"image"` or `"image+text"`."""
        return "+".join(name for name, part in (("image", self.image), ("text", self.text)) if part is not None)

    @property
    def images(self) -> list[Image.Image]:
        return [] if self.image is None else [self.image]


def as_content(item: Any, keep_text: bool = True, max_chars: int | None = None) -> Content:
    """A query or a candidate as a `Content`.

    Accepted forms: a string (a text); a PIL image; anything with `.image` and `.text` (a `Page`); an
    `(image, text)` pair; a mapping with `"image"` and / or `"text"` (or `"ocr"`).

    Args:
        item: the query or candidate.
        keep_text: whether the text that comes with an image (a page's OCR text) is kept; a plain string is
            always kept, since it is the whole item.
        max_chars: a kept image's text is cut to this many characters (OCR text can be very long).

    Raises:
        TypeError: an unsupported form, or an image part that is not a PIL image.
        ValueError: an item with neither an image nor a text.
    """
    if isinstance(item, str):
        image, text, paired = None, item, False
    elif isinstance(item, Image.Image):
        image, text, paired = item, None, False
    elif isinstance(item, Mapping):
        image, text, paired = item.get("image"), item.get("text") or item.get("ocr"), True
    elif hasattr(item, "image") and hasattr(item, "text"):
        image, text, paired = item.image, item.text, True
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        (image, text), paired = item, True
    else:
        raise TypeError("a query or candidate must be a string, a PIL image, a Page, an (image, text) pair or a dict; "
                        f"got {type(item).__name__}")
    if image is not None and not isinstance(image, Image.Image):
        raise TypeError(f"an item's image must be a PIL image, got {type(image).__name__}")
    if paired and image is not None:  # the text that comes with an image: kept or not, and cut
        text = (text or None) if keep_text else None
        if text is not None and max_chars is not None:
            text = text[:max_chars]
    if image is None and not text:
        raise ValueError("a query or candidate needs an image or a non-empty text")
    return Content(image, text or None)


class PairTemplate:
    """Renders a (query, document) pair; subclasses say which kinds of each side they accept."""

    name: ClassVar[str]
    query_kinds: ClassVar[tuple[str, ...]]
    document_kinds: ClassVar[tuple[str, ...]]
    # True: a document's text is always scored with its image, as the authors' code does; False: the card scores the
    # image alone, and the text that comes with an image is used only when the reranker's `use_ocr` asks for it.
    keeps_document_text: ClassVar[bool] = False
    # True: the document comes first in the rendered text, so the pairs that rerank one document share a prefix
    # (`shared.py` runs it once); False: the query comes first.
    document_first: ClassVar[bool] = True

    def check(self, query: Content, document: Content) -> None:
        """Raise `ValueError` for a query or a document of a kind the card does not support."""
        for side, content, kinds in (("query", query, self.query_kinds), ("document", document, self.document_kinds)):
            if content.kind not in kinds:
                raise ValueError(f"the {self.name!r} template (its model card) takes a {side} that is "
                                 f"{' or '.join(kinds)}, not {content.kind}")

    def render(self, query: Content, document: Content, processor: Any) -> tuple[str, list[Image.Image]]:
        """The pair's model input text (before the processor expands the images) and its images, in text order."""
        self.check(query, document)
        return self._render(query, document, processor)

    def _render(self, query: Content, document: Content, processor: Any) -> tuple[str, list[Image.Image]]:
        raise NotImplementedError


@dataclass
class MonoQwenTemplate(PairTemplate):
    """MonoQwen2-VL: one user turn -- the document image, then `prompt` with the query (and, when the document
    carries text, `ocr_prefix` with it first) -- then the assistant generation prompt, via the chat template.

    The card builds `[{"role": "user", "content": [{"type": "image", ...}, {"type": "text", "text": prompt}]}]`
    and calls `processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`; Qwen2-VL's
    template adds its default system turn ("You are a helpful assistant.").
    """

    prompt: str = MONOQWEN_PROMPT
    ocr_prefix: str = MONOQWEN_OCR_PREFIX

    name: ClassVar[str] = "monoqwen"
    query_kinds: ClassVar[tuple[str, ...]] = ("text",)
    document_kinds: ClassVar[tuple[str, ...]] = ("image", "image+text")

    def __post_init__(self) -> None:
        if "{query}" not in self.prompt:
            raise ValueError("prompt must contain '{query}'")

    def prompt_text(self, query: str, document: Content) -> str:
        """The user text after the image: the prompt with the query, the document's text first if it has one."""
        text = self.prompt.format(query=query)
        return self.ocr_prefix.format(ocr=document.text) + text if document.text else text

    def _render(self, query: Content, document: Content, processor: Any) -> tuple[str, list[Image.Image]]:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.prompt_text(query.text, document)}]}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), document.images


@dataclass
class JinaTemplate(PairTemplate):
    """jina-reranker-m0: `**Document**:\\n<doc>\\n**Query**:\\n<query>`, no chat template, each side a text or an
    image placeholder; the images go document first, as in the text.

    From the hub's modeling.py (`formatting_prompts_func`, and `compute_score`, which passes `[doc_image,
    query_image]` per pair); vLLM keeps a copy in tests/models/multimodal/pooling/test_jinavl_reranker.py. The score
    token (id 100) that `compute_score` appends after tokenising is added by the reranker (`score_token_id`).
    """

    name: ClassVar[str] = "jina"
    query_kinds: ClassVar[tuple[str, ...]] = ("text", "image")
    document_kinds: ClassVar[tuple[str, ...]] = ("text", "image")

    def _render(self, query: Content, document: Content, processor: Any) -> tuple[str, list[Image.Image]]:
        text = _jina_part("Document", document) + "\n" + _jina_part("Query", query)
        return text, document.images + query.images


def _jina_part(label: str, content: Content) -> str:
    return f"**{label}**:\n" + (IMAGE_PLACEHOLDER if content.image is not None else content.text)


@dataclass
class YesNoTemplate(PairTemplate):
    """Qwen3-VL-Reranker and lychee-rerank-mm: a system turn asking for "yes" or "no", then one user turn
    `<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}`, then the assistant generation prompt.

    Each side is its image placeholder followed by its whole text (either may be absent): a document's text is never
    dropped or cut, as in `Qwen3VLReranker.format_mm_content` (`keeps_document_text`). This is the string of the
    authors' vLLM template (examples/reranker_template.jinja of QwenLM/Qwen3-VL-Embedding, commit
    8ce3aab1fbcc7b7143b094f0b2005dd89e7246b9), which is also what Qwen's chat template makes of the messages
    `Qwen3VLReranker.format_mm_instruction` builds (text parts joined with nothing between them): the text is
    written here directly, so it does not depend on the checkpoint's chat template.
    """

    instruction: str = QWEN3_VL_INSTRUCTION
    system: str = YES_NO_SYSTEM

    name: ClassVar[str] = "yes_no"
    query_kinds: ClassVar[tuple[str, ...]] = KINDS
    document_kinds: ClassVar[tuple[str, ...]] = KINDS
    keeps_document_text: ClassVar[bool] = True
    document_first: ClassVar[bool] = False

    def _render(self, query: Content, document: Content, processor: Any) -> tuple[str, list[Image.Image]]:
        text = (f"<|im_start|>system\n{self.system}<|im_end|>\n<|im_start|>user\n<Instruct>: {self.instruction}"
                f"<Query>:{_yes_no_part(query)}\n<Document>:{_yes_no_part(document)}<|im_end|>\n"
                "<|im_start|>assistant\n")
        return text, query.images + document.images


def _yes_no_part(content: Content) -> str:
    return (IMAGE_PLACEHOLDER if content.image is not None else "") + (content.text or "")


TEMPLATES: dict[str, type[PairTemplate]] = {t.name: t for t in (MonoQwenTemplate, JinaTemplate, YesNoTemplate)}


def make_template(name: str, prompt: str = MONOQWEN_PROMPT, ocr_prefix: str = MONOQWEN_OCR_PREFIX,
                  instruction: str | None = None) -> PairTemplate:
    """The template called `name`, with the settings that apply to it (`prompt` and `ocr_prefix` for
    `monoqwen`, `instruction` for `yes_no`; None keeps Qwen3-VL-Reranker's default instruction).

    Raises:
        ValueError: an unknown name (listing the known ones), or an instruction for a template without one.
    """
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; the templates are {sorted(TEMPLATES)}")
    if instruction is not None and name != "yes_no":
        raise ValueError(f"the {name!r} template has no instruction (only 'yes_no' has one)")
    if name == "monoqwen":
        return MonoQwenTemplate(prompt, ocr_prefix)
    if name == "yes_no":
        return YesNoTemplate(instruction or QWEN3_VL_INSTRUCTION)
    return JinaTemplate()
