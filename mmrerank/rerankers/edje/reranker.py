"""EDJE online: precompute a corpus's image tokens once (`precompute_images`), then rerank with `EDJEReranker`.

`EDJEReranker` scores (caption, image) pairs in both directions: t2i (a caption against its top-k images) and i2t
(an image against its top-k captions). Image tokens come from a `TokenStore` by image id, so the vision tower
never runs online; images without a store (`score` on PIL images) are encoded on the fly.

The score is the joint encoder's logit; fusing in the first stage's score is `rerankers.fusion.Fused`'s job.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from mmrerank.core import distributed
from mmrerank.core.deprecation import renamed_arguments
from mmrerank.core.device import resolve_device
from mmrerank.core.items import Items, RetrievalTask
from mmrerank.rerankers.base import Reranker
from mmrerank.rerankers.edje.model import EDJE
from mmrerank.rerankers.edje.provenance import images_digest, state_digest
from mmrerank.rerankers.edje.store import TokenStore, TokenStoreError, TokenStoreLockedError, canonical_dtype
from mmrerank.rerankers.edje.writer import TokenStoreWriter, write_token_store


@renamed_arguments(dtype="store_dtype")
def precompute_images(model: EDJE, images: Items, store_path: str | Path, store_dtype: str = "bfloat16",
                      shard_size: int = 1024, batch_size: int = 128, device: str = "auto", overwrite: bool = False,
                      progress: bool = True, on_mismatch: str = "rebuild") -> TokenStore:
    """Encode `images` with the model's frozen vision source and adapter into a token store `[N, m, d]`.

    Resumable: shards an interrupted run finished are kept (see `TokenStoreWriter`). The store's ids are the
    images' ids. Its header records its provenance: sha256 digests of the EDJE model's weights, of the vision
    source's weights, of the model's config, and of the images (`images_digest`: the pixels of an `ImageArray`,
    the paths, sizes and mtimes of `ImageFiles`). An existing store is resumed or reused only when all of these
    (and ids, shape, dtype, shard size) match. Otherwise it is stale: by default (`on_mismatch="rebuild"`, what
    `mmrerank benchmark` and `mmrerank precompute` use) it is rebuilt with a warning; a store from before
    provenance was recorded is rebuilt too. `on_mismatch="error"` raises `StaleTokenStoreError` instead.

    Under `torch.distributed` (`torchrun`) it is collective: every rank encodes a share of the shards, rank 0 writes
    them (`_precompute_on_ranks`), and every rank gets the finished store.

    Args:
        overwrite: rebuild even a matching store.
        on_mismatch: `"rebuild"` or `"error"`, for a stale store.
    """
    device = resolve_device(device)
    source = model.config.vision_source()
    # Everything the tokens depend on: the source's weights (a first-stage checkpoint, pretrained or random
    # weights), the adapter's weights and patch statistics (in the model's state), and the config's shapes and
    # preprocessing. The whole model is digested, not only its adapter: a retrained model invalidates its tokens.
    config = json.dumps(asdict(model.config), sort_keys=True, default=str)
    provenance = {"model": state_digest(model.state_dict()), "vision": state_digest(source.state_dict()),
                  "config": hashlib.sha256(config.encode()).hexdigest(), "images": images_digest(images)}
    source = source.to(device)
    model = model.to(device).eval()

    def encode(rows: Tensor) -> Tensor:
        patches = source.encode([images[int(i)] for i in rows])
        return model.compress(patches)

    fill = write_token_store if distributed.world()[1] == 1 else _precompute_on_ranks
    return fill(store_path, list(images.ids), encode, m=model.num_image_tokens, d=model.dim, dtype=store_dtype,
                shard_size=shard_size, batch_size=batch_size, progress=progress, overwrite=overwrite,
                provenance=provenance, on_mismatch=on_mismatch)


def _precompute_on_ranks(store_path: str | Path, ids: list[Any], encode_fn: Callable[[Tensor], Tensor], *, m: int,
                         d: int, dtype: str, shard_size: int, batch_size: int | None, progress: bool, overwrite: bool,
                         provenance: dict[str, Any], on_mismatch: str) -> TokenStore:
    """`write_token_store` over the `torch.distributed` ranks (collective; the same arguments).

    A store has one writer, so rank 0 alone holds it (lock, resume or rebuild, checksums, `finalize`). Shard `k` of
    the unwritten ones is encoded on rank `k % world_size`, in the batches `write_token_store` makes (so the bytes are
    those one process writes), and gathered to rank 0, which writes the shards in order.
    """
    writer: TokenStoreWriter | None = None
    batch_size = batch_size or shard_size
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[canonical_dtype(dtype)]

    def open_writer() -> list[int]:
        nonlocal writer
        args = (store_path, ids, m, d, dtype, shard_size)
        try:
            writer = TokenStoreWriter(*args, overwrite=overwrite, provenance=provenance)
        except TokenStoreLockedError:
            raise
        except TokenStoreError as err:  # stale or malformed: as `write_token_store` does
            if on_mismatch != "rebuild":
                raise
            warnings.warn(f"rebuilding token store {store_path}: {err}", stacklevel=4)
            writer = TokenStoreWriter(*args, overwrite=True, provenance=provenance)
        return writer.pending_shards()

    def encode_shard(k: int) -> Tensor:
        """`[rows of shard k, m, d]` in the store's dtype, on the CPU (for the gather)."""
        start, stop = k * shard_size, min((k + 1) * shard_size, len(ids))
        with torch.no_grad():
            return torch.cat([encode_fn(torch.arange(s, min(s + batch_size, stop))).detach().cpu().to(torch_dtype)
                              for s in range(start, stop, batch_size)])

    try:
        pending = distributed.from_rank_zero(open_writer)
        with tqdm(total=len(ids), initial=len(ids) - sum(min(shard_size, len(ids) - k * shard_size) for k in pending),
                  desc=f"precompute {Path(store_path).name}", unit="img",
                  disable=not (progress and distributed.is_rank_zero())) as bar:
            def write(k: int, tokens: Tensor) -> None:  # on rank 0; write_shard checks shape, dtype, finite values
                writer.write_shard(k, tokens)
                bar.update(len(tokens))

            distributed.map_to_rank_zero(pending, encode_shard, write)
        distributed.from_rank_zero(lambda: writer.finalize().root)  # then every rank opens the finished store
    finally:
        if writer is not None:
            writer.close()
    return TokenStore(store_path)


class EDJEReranker(Reranker):
    """The EDJE reranker.

    Args:
        model: an exported `EDJE` folder (or a loaded model).
        store: the corpus's token store (folder or `TokenStore`); None encodes images on the fly.
        device: `auto` (GPU when present), `cpu` or `cuda`.
        bf16: score under bfloat16 autocast (about 1.7x faster on CPUs with AVX-512 BF16; logits move by about 3 % of
            their spread, so near-ties may swap).
    """

    def __init__(self, model: str | Path | EDJE, store: str | Path | TokenStore | None = None,
                 device: str = "auto", bf16: bool = False) -> None:
        self.device, self.bf16 = resolve_device(device), bf16
        self.model = (model if isinstance(model, EDJE) else EDJE.from_pretrained(model)).to(self.device).eval()
        self.store = TokenStore(store) if isinstance(store, (str, Path)) else store
        if self.store is not None and self.store.shape[1:] != (self.model.num_image_tokens, self.model.dim):
            raise ValueError(f"token store {self.store.root} holds {self.store.shape[1:]} tokens per image; the model "
                             f"reads {(self.model.num_image_tokens, self.model.dim)}")
        self._source = None

    def image_tokens(self, images: Sequence[Any]) -> Tensor:
        """`[B, m, d]` tokens of images given as store ids (str), PIL images (encoded now) or `[m, d]` tensors."""
        if all(isinstance(x, Tensor) for x in images):
            return torch.stack(list(images)).to(self.device)
        if all(isinstance(x, Image.Image) for x in images):
            if self._source is None:
                self._source = self.model.config.vision_source().to(self.device)
            with torch.no_grad():
                return self.model.compress(self._source.encode(images))
        if self.store is None:
            raise ValueError("image ids need a token store: pass store= (written by `mmrerank precompute`)")
        return self.store[list(images)].to(self.device)

    @torch.no_grad()
    def score(self, queries: Sequence[Any], candidates: Sequence[Any]) -> Tensor:
        """Pairs of (caption, image) in either order: one side strings, the other PIL images or token tensors.
        Returns the `[B]` logits on the CPU."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates")
        if not queries:
            return torch.zeros(0)
        texts, images = (queries, candidates) if isinstance(queries[0], str) else (candidates, queries)
        return self._score(list(texts), self.image_tokens(images))

    def _score(self, captions: list[str], tokens: Tensor) -> Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.score(captions, tokens).float().cpu()

    @torch.no_grad()
    def score_rows(self, task: RetrievalTask, query_rows: Tensor, candidate_rows: Tensor,
                   first_stage: Tensor) -> Tensor:
        """As `Reranker.score_rows`; image tokens come from the store by id (the fast path)."""
        texts, images = (task.queries, task.corpus) if task.queries.modality == "text" else (task.corpus, task.queries)
        text_rows, image_rows = (query_rows, candidate_rows) if texts is task.queries else (candidate_rows, query_rows)
        captions = [texts[int(i)] for i in text_rows]
        if self.store is not None:
            tokens = self.store[[images.ids[int(i)] for i in image_rows]]
        else:
            unique, inverse = image_rows.unique(return_inverse=True)  # i2t: one query image, k candidates
            tokens = self.image_tokens([images[int(i)] for i in unique])[inverse.to(self.device)]
        return self._score(captions, tokens)
