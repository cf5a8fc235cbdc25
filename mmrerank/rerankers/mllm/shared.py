"""Scoring that does each piece of work once: the path `MLLMReranker.score` takes by default (`scoring="shared"`).

The plain path (`scoring="plain"`) sends every pair through the processor and the whole model: a page that ten
queries rerank is resized, patched and run through the vision tower ten times, and its few hundred visual tokens
through the language model ten times. Here, within one `score` call:

1. each distinct image (by content) is prepared and patched by the image processor once, and run through the vision
   tower once, in chunks of at most `max_tokens_per_batch` visual tokens;
2. each pair's text is tokenised with its image placeholders expanded as the processor expands them (so the token
   ids are the processor's), and its multimodal rope positions computed on the whole sequence;
3. pairs that share their first side -- the document for templates that put it first (`monoqwen`, `jina`), the
   query for those that put the query first (`yes_no`) -- share the longest common token prefix of their sequences:
   that prefix goes through the language model once, and its key / value cache is reused by each pair's suffix
   (for MonoQwen2-VL: the system turn and the page image once per page; the query's ~30 tokens per pair);
4. language-model passes are bucketed by length: prefixes of one length together, suffixes sorted by length and
   right-padded (in a causal model no real token sees a later pad, so no mask is needed), each pass at most
   `batch_size` rows and `max_tokens_per_batch` cached + new tokens, which bounds peak memory whatever the page
   sizes.

Across calls, the reranker's `ImageCache` keeps the vision features of the images scored (a rerank scores its run
in several calls, which share images), up to `image_cache_tokens` visual tokens, and drops them all when the vision
tower's weights change.

The score of every pair is that of the plain path up to float rounding (the same token ids, positions and image
features; attention over the same keys): the tests compare both per preset to 1e-5 in fp32.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import DynamicCache

from mmrerank.core.io import atomic_write
from mmrerank.rerankers.mllm.templates import as_content


@dataclass
class ImageFeatures:
    """What the model's `forward` reads from `mm_encoder_outputs["image"]`: per-image tuples of visual features
    (and, for Qwen3-VL, of each deepstack layer's features)."""

    pooler_output: tuple[Tensor, ...]
    deepstack_features: list[tuple[Tensor, ...]] | None = None


@dataclass
class EncodedImage:
    """One distinct image of a `score` call: its processor outputs, then its vision features.

    Attributes:
        pixel_values: `[patches, C*T*P*P]` from the image processor (None once encoded).
        grid_thw: `[3]` its (temporal, height, width) patch grid.
        features: `[tokens, d]` the vision tower's merged output (tokens = prod(grid_thw) / merge^2).
        deepstack: Qwen3-VL's per-layer `[tokens, d]` features, else None.
        path: where the on-disk cache writes it once encoded (None: not written).
    """

    pixel_values: Tensor | None
    grid_thw: Tensor
    features: Tensor | None = None
    deepstack: list[Tensor] | None = None
    path: Path | None = None  # where an on-disk cache keeps it once encoded


@dataclass
class PairInput:
    """One pair as token ids: `ids` (the whole sequence, ending where the score is read), its rope positions
    `[3, len]`, the keys of its images in text order, and the key of the side it shares with other pairs."""

    ids: list[int]
    positions: Tensor
    images: list[int]
    group: Any
    n_shared_images: int
    prefix: int = 0  # tokens served from the group's shared prefix cache
    slot: int = -1  # the row of its prefix in its prefix pass
    image_starts: list[int] = field(default_factory=list)  # index of each image's first visual token


class ImageIndex:
    """Names each distinct image: the same object, or an equal image in another object (a benchmark that resizes a
    corpus image for every pair), gets the same key.

    Hashing a page's pixels costs more than the rest of its bookkeeping (~3 ms a megapixel), so an image is first
    compared at a glance -- mode, size and a 16 x 16 nearest-neighbour sample -- and its pixels are hashed only when
    an image seen before looks the same. Objects are recognised by id within one call (`end_call` forgets them, so
    that the copies a caller makes are not all held); the first image of each key is held until `forget`.
    """

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[Image.Image, int]] = {}  # the image is held so that its id is not reused
        self.by_glance: dict[tuple, list[list]] = {}  # glance -> [[image, digest or None, key], ...]
        self.glances: dict[int, tuple] = {}  # key -> its glance
        self.next_key = 0

    def key(self, image: Image.Image) -> tuple[int, bool]:
        """(the image's key, whether it is new to this index)."""
        if id(image) in self.by_id:
            return self.by_id[id(image)][1], False
        glance = (image.mode, image.size, image.resize((16, 16), Image.NEAREST).tobytes())
        alike = self.by_glance.setdefault(glance, [])
        key, digest = None, None
        if alike:
            digest = _digest(image)
            for entry in alike:
                entry[1] = entry[1] or _digest(entry[0])
                if entry[1] == digest:
                    key = entry[2]
                    break
        new = key is None
        if new:
            key, self.next_key = self.next_key, self.next_key + 1
            alike.append([image, digest, key])
            self.glances[key] = glance
        self.by_id[id(image)] = (image, key)
        return key, new

    def end_call(self) -> None:
        self.by_id.clear()

    def forget(self, key: int) -> None:
        glance = self.glances.pop(key)
        self.by_glance[glance] = [entry for entry in self.by_glance[glance] if entry[2] != key]


class ImageCache:
    """The images a reranker has prepared and encoded, by `ImageIndex` key, kept across `score` calls (a rerank
    scores its run in several calls, which share images) up to `capacity` visual tokens, the least recently used
    dropped first; emptied when the vision tower's weights change (training between two calls).

    Each entry keeps the vision features, not the pixels (dropped once encoded): a page of 1,024 visual tokens is
    1,024 x hidden numbers (3 MB for Qwen2-VL-2B in bf16).

    With `folder`, the features are also written there (safetensors) and read back by later calls and processes,
    named by the image's content (sha256 of mode, size and pixels) under a digest of the vision tower's weights and
    of what prepares an image (the image processor's settings and the resize): another model or other pixel limits
    never read them.
    """

    def __init__(self, capacity: int | None, folder: str | Path | None = None) -> None:
        self.capacity, self.folder = capacity, Path(folder) if folder is not None else None
        self.index = ImageIndex()
        self.images: OrderedDict[int, EncodedImage] = OrderedDict()
        self.signature: tuple | None = None
        self.model_digest: str | None = None

    def check(self, vision: torch.nn.Module, settings: str) -> None:
        """Empty the cache if `vision`'s weights changed since the last call (another tensor, or updated in place:
        each in-place update bumps a tensor's version); with a folder, digest the weights and `settings` (what
        prepares an image: the image processor's and resize settings) to name the folder's entries."""
        signature = tuple((p.data_ptr(), p._version, p.dtype) for p in vision.parameters())
        if signature != self.signature:
            self.clear()
            self.signature = signature
            self.model_digest = _model_digest(vision, settings) if self.folder is not None else None

    def path(self, image: Image.Image) -> Path | None:
        """Where the folder keeps `image`'s features under this model: `<folder>/<model digest>/<content>.safetensors`
        (None without a folder)."""
        if self.folder is None:
            return None
        content = hashlib.sha256(image.tobytes())
        content.update(f"{image.mode}{image.size}".encode())
        return self.folder / self.model_digest / f"{content.hexdigest()}.safetensors"

    def clear(self) -> None:
        self.index, self.images = ImageIndex(), OrderedDict()

    def end_call(self, merge: int) -> None:
        """Forget the call's objects, and drop the least recently used images beyond `capacity` visual tokens."""
        self.index.end_call()
        tokens = sum(int(image.grid_thw.prod()) // merge ** 2 for image in self.images.values())
        while self.images and self.capacity is not None and tokens > self.capacity:
            key, image = self.images.popitem(last=False)
            tokens -= int(image.grid_thw.prod()) // merge ** 2
            self.index.forget(key)


def _model_digest(vision: torch.nn.Module, settings: str) -> str:
    """sha256 of the vision tower's weights (names, dtypes, shapes, bytes) and of `settings` (16 hex digits)."""
    digest = hashlib.sha256(settings.encode())
    for name, tensor in vision.state_dict().items():
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _load_features(path: Path) -> EncodedImage:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    deepstack = [tensors[f"deepstack.{i}"] for i in range(sum(k.startswith("deepstack.") for k in tensors))]
    return EncodedImage(None, tensors["grid_thw"], tensors["features"], deepstack or None)


def _save_features(path: Path, image: EncodedImage) -> None:
    from safetensors.torch import save_file

    tensors = {"grid_thw": image.grid_thw, "features": image.features,
               **{f"deepstack.{i}": t for i, t in enumerate(image.deepstack or [])}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def _digest(image: Image.Image) -> bytes:
    return hashlib.sha256(image.tobytes()).digest()  # the fastest of hashlib's here (SHA extensions)


class SharedScorer:
    """Runs `MLLMReranker` pairs with the work shared as the module docstring says; built per `score` call.

    Args:
        reranker: the `MLLMReranker` (its template, processor and model are used).
        batch_size: rows per language-model pass.
        max_tokens_per_batch: bound on rows x (cached + new) tokens per language-model pass and on visual tokens
            per vision pass (None: no bound but `batch_size`); a single longer sequence or image runs alone.
    """

    def __init__(self, reranker, batch_size: int, max_tokens_per_batch: int | None,
                 cache: ImageCache | None = None) -> None:
        self.reranker, self.batch_size = reranker, batch_size
        self.budget = max_tokens_per_batch or float("inf")
        self.processor = reranker.processor
        self.backbone, _ = reranker._language_model_parts()
        self.device = reranker.device
        self.image_token_id = self.processor.image_token_id
        self.vision_start_id = self.processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        self.merge = self.processor.image_processor.merge_size
        self.cache = cache if cache is not None else ImageCache(capacity=0)
        self.cache.check(self.backbone.visual, self._preparation())
        self.images, self.index = self.cache.images, self.cache.index
        self.shapes: dict[tuple, tuple[list[int], list[str]]] = {}  # see `_pair`
        self.positions: dict[tuple, Tensor] = {}

    def _preparation(self) -> str:
        """What turns an image into the vision tower's input: the image processor's settings and the resize."""
        resize = self.reranker.vision_resize
        return self.processor.image_processor.to_json_string() + json.dumps(resize.settings() if resize else None)

    @torch.no_grad()
    def hidden(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """`[B, d]` the last layer's hidden state at the last position of each pair `queries[i]`, `candidates[i]`
        (where the plain path reads its score)."""
        try:
            pairs = [self._pair(q, c) for q, c in zip(queries, candidates)]
            self._encode_images()
            return self._hidden(pairs)
        finally:
            self.cache.end_call(self.merge)

    def _hidden(self, pairs: list[PairInput]) -> Tensor:
        self._plan_prefixes(pairs)
        hidden = torch.empty(len(pairs), self.backbone.config.get_text_config().hidden_size, device=self.device,
                             dtype=self.backbone.dtype)
        by_prefix: dict[int, list[int]] = {}
        for i, pair in enumerate(pairs):
            by_prefix.setdefault(pair.prefix, []).append(i)
        for length, members in sorted(by_prefix.items()):
            if length == 0:
                self._run_suffixes(pairs, members, hidden, cache=None)
            else:
                self._run_shared(pairs, members, length, hidden)
        return hidden

    # -- inputs -------------------------------------------------------------------------------------------------

    def _pair(self, query: Any, candidate: Any) -> PairInput:
        """A pair's token ids -- the processor's: its text's, each image placeholder repeated once per visual token --
        and its rope positions. A template's text depends on each side's text and on whether it has an image, not
        on the image: it is rendered and tokenised once per such shape, and the positions computed once per
        shape and image grids."""
        reranker = self.reranker
        query, document = as_content(query), reranker._document(candidate)
        shape = (query.text, query.image is not None, document.text, document.image is not None)
        if shape not in self.shapes:
            text, images = reranker.template.render(query, document, self.processor)
            ids = self.processor.tokenizer(text)["input_ids"]  # the placeholder is one added token, never merged
            if reranker.score_token_id is not None:
                ids = ids + [reranker.score_token_id]
            sides = ["query" if image is query.image else "document" for image in images]
            self.shapes[shape] = (ids, sides)
        ids, sides = self.shapes[shape]
        keys = [self._add_image(query.image if side == "query" else document.image) for side in sides]
        ids = self._expand(ids, [self._n_tokens(k) for k in keys])
        shared = document if reranker.template.document_first else query
        group = (shared.text, self._add_image(shared.image) if shared.image is not None else None)
        positions = self._positions(shape, ids, keys)
        return PairInput(ids, positions, keys, group, len(shared.images))

    def _expand(self, ids: list[int], counts: list[int]) -> list[int]:
        """`ids` with the i-th image placeholder token repeated `counts[i]` times (as the processor expands it)."""
        out, images = [], iter(counts)
        for token in ids:
            out.extend([token] * next(images) if token == self.image_token_id else [token])
        if next(images, None) is not None:
            raise ValueError("a rendered pair has fewer image placeholders than images")
        return out

    def _add_image(self, image: Image.Image) -> int:
        """The image's key, preparing it the first time it is seen (as this object or an equal one)."""
        key, new = self.index.key(image)
        if new:
            path = self.cache.path(image)
            if path is not None and path.is_file():
                self.images[key] = _load_features(path)
            else:
                out = self.processor.image_processor(images=[self.reranker._prepare_image(image)],
                                                     return_tensors="pt")
                self.images[key] = EncodedImage(out["pixel_values"], out["image_grid_thw"][0], path=path)
        self.images.move_to_end(key)  # the most recently used go last (`ImageCache.end_call` drops the first)
        return key

    def _n_tokens(self, key: int) -> int:
        return int(self.images[key].grid_thw.prod()) // self.merge ** 2

    def _positions(self, shape: tuple, ids: list[int], keys: list[int]) -> Tensor:
        """`[3, len]` the model's multimodal rope positions of the whole sequence (as the plain path's). They depend
        on which tokens are visual and on the image grids only, so they are computed once per shape and grids."""
        grids = tuple(tuple(self.images[k].grid_thw.tolist()) for k in keys)
        if (shape, grids) not in self.positions:
            input_ids = torch.tensor([ids])
            types = (input_ids == self.image_token_id).int()
            positions, _ = self.backbone.get_rope_index(input_ids=input_ids, mm_token_type_ids=types,
                                                        image_grid_thw=torch.tensor(grids) if grids else None)
            self.positions[(shape, grids)] = positions[:, 0]
        return self.positions[(shape, grids)]

    def _encode_images(self) -> None:
        """Every distinct image not encoded yet through the vision tower once, at most `budget` visual tokens a pass;
        its pixels are then dropped."""
        keys = [key for key, image in self.images.items() if image.features is None]
        for chunk in _chunks(keys, [self._n_tokens(k) for k in keys], self.budget, limit=None):
            pixels = torch.cat([self.images[k].pixel_values for k in chunk]).to(self.device)
            grids = torch.stack([self.images[k].grid_thw for k in chunk]).to(self.device)
            out = self.backbone.get_image_features(pixels, grids, return_dict=True)
            deepstack = getattr(out, "deepstack_features", None)
            for i, key in enumerate(chunk):
                image = self.images[key]
                image.features, image.pixel_values = out.pooler_output[i], None
                image.deepstack = [layer[i] for layer in deepstack] if deepstack else None
                if image.path is not None:
                    _save_features(image.path, image)

    def _features(self, keys: list[int]) -> dict[str, ImageFeatures] | None:
        """`mm_encoder_outputs` for a pass whose image tokens are those of `keys`, in row-major order."""
        if not keys:
            return None
        images = [self.images[k] for k in keys]
        deepstack = None
        if images[0].deepstack is not None:
            deepstack = [tuple(image.deepstack[layer] for image in images) for layer in range(len(images[0].deepstack))]
        return {"image": ImageFeatures(tuple(image.features for image in images), deepstack)}

    # -- prefix sharing -----------------------------------------------------------------------------------------

    def _plan_prefixes(self, pairs: list[PairInput]) -> None:
        """Set each pair's `prefix`: the longest token prefix its group shares, cut before the first image that is
        not the shared side's (two different images of one size have the same placeholder tokens), and short of
        every member's last token (read from the pair's own pass). Groups of one pair share nothing."""
        groups: dict[Any, list[PairInput]] = {}
        for pair in pairs:
            groups.setdefault(pair.group, []).append(pair)
        for members in groups.values():
            if len(members) < 2:
                continue
            length = min(len(p.ids) for p in members) - 1
            first = members[0].ids
            for pair in members[1:]:
                length = next((i for i in range(length) if pair.ids[i] != first[i]), length)
            starts = [i for i, t in enumerate(first[:length]) if t == self.vision_start_id]
            if len(starts) > members[0].n_shared_images:
                length = starts[members[0].n_shared_images]
            for pair in members:
                pair.prefix = length

    def _run_shared(self, pairs: list[PairInput], members: list[int], length: int, hidden: Tensor) -> None:
        """Pairs whose shared prefixes are `length` tokens long: prefixes of distinct groups in passes of at most
        `batch_size` rows and `budget` tokens, then every pair's suffix over its group's cached prefix."""
        groups: dict[Any, list[int]] = {}
        for i in members:
            groups.setdefault(pairs[i].group, []).append(i)
        heads = list(groups)
        for chunk in _chunks(heads, [length] * len(heads), self.budget, limit=self.batch_size):
            rows = [groups[g][0] for g in chunk]
            ids = torch.tensor([pairs[i].ids[:length] for i in rows], device=self.device)
            positions = torch.stack([pairs[i].positions[:, :length] for i in rows], dim=1).to(self.device)
            keys = [k for i in rows for k in pairs[i].images[:self._images_before(pairs[i], length)]]
            cache = DynamicCache(config=self.backbone.config.get_text_config())
            self.backbone(input_ids=ids, position_ids=positions, cache=cache, use_cache=True,
                          mm_encoder_outputs=self._features(keys))
            kv = [(layer.keys, layer.values) for layer in cache.layers]
            for slot, group in enumerate(chunk):
                for i in groups[group]:
                    pairs[i].slot = slot
            self._run_suffixes(pairs, [i for g in chunk for i in groups[g]], hidden, cache=kv)

    def _images_before(self, pair: PairInput, length: int) -> int:
        """How many of the pair's images lie in its first `length` tokens."""
        return sum(1 for t in pair.ids[:length] if t == self.vision_start_id)

    def _run_suffixes(self, pairs: list[PairInput], members: list[int], hidden: Tensor,
                      cache: list[tuple[Tensor, Tensor]] | None) -> None:
        """Each pair's tokens after its prefix (all of them without a cache), sorted by length, right-padded, in
        passes of at most `batch_size` rows and `budget` cached + new tokens; the hidden state at each row's last
        real token goes to `hidden`."""
        members = sorted(members, key=lambda i: len(pairs[i].ids) - pairs[i].prefix)
        sizes = [len(pairs[i].ids) for i in members]  # cached + new tokens of each row
        pad = self.processor.tokenizer.pad_token_id
        for chunk in _chunks(members, sizes, self.budget, limit=self.batch_size, padded=True):
            start = pairs[chunk[0]].prefix
            lengths = [len(pairs[i].ids) - start for i in chunk]
            width = max(lengths)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            positions = torch.zeros(3, len(chunk), width, dtype=torch.long)
            for row, (i, n) in enumerate(zip(chunk, lengths)):
                ids[row, :n] = torch.tensor(pairs[i].ids[start:])
                positions[:, row, :n] = pairs[i].positions[:, start:]
                # pads continue the positions (never read; any value keeps the real rows exact)
                positions[:, row, n:] = positions[:, row, n - 1:n] + torch.arange(1, width - n + 1)
            keys = [k for i in chunk for k in pairs[i].images[self._images_before(pairs[i], start):]]
            past = None
            if cache is not None:
                slots = torch.tensor([pairs[i].slot for i in chunk], device=self.device)
                past = DynamicCache(config=self.backbone.config.get_text_config())
                for layer, (k, v) in enumerate(cache):
                    past.update(k.index_select(0, slots), v.index_select(0, slots), layer)
            out = self.backbone(input_ids=ids.to(self.device), position_ids=positions.to(self.device), cache=past,
                                use_cache=past is not None, mm_encoder_outputs=self._features(keys))
            last = torch.tensor(lengths, device=self.device) - 1
            hidden[torch.tensor(chunk, device=self.device)] = out.last_hidden_state[
                torch.arange(len(chunk), device=self.device), last]


def _chunks(items: list, sizes: list[int], budget: float, limit: int | None, padded: bool = False) -> list[list]:
    """`items` cut in order into runs of at most `limit` items whose token count stays within `budget`: the sum of
    their `sizes`, or with `padded` (a right-padded pass) the run's length times its largest size. An item above the
    budget on its own makes a run of one."""
    runs, run, run_sizes = [], [], []
    for item, size in zip(items, sizes):
        trial = run_sizes + [size]
        cost = max(trial) * len(trial) if padded else sum(trial)
        if run and ((limit is not None and len(run) >= limit) or cost > budget):
            runs.append(run)
            run, run_sizes = [], []
        run.append(item)
        run_sizes.append(size)
    if run:
        runs.append(run)
    return runs
