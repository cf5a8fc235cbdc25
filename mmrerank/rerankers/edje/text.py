"""EDJE's text sides: what the joint encoder reads for a caption.

- `words` (no module here): the joint encoder's own word embeddings of the caption's word pieces (a fresh vocabulary
  built from the training captions, or a pretrained BERT's, e.g. MiniLM, with its tokenizer).
- `first_stage` (`FirstStageText`): the first stage's open_clip text tower, already aligned with the images, read
  token by token. ALBEF and BLIP build their fusion (ITM) encoders this way: the multimodal layers read the text
  encoder's token states, not raw word embeddings. On the synthetic benchmark this is what lets a CPU-trained joint
  encoder beat the first stage (BENCHMARKS.md, "EDJE reranking quality").

A text side maps captions to `(ids [B, T], mask [B, T])` (`tokenize`) and ids to `[B, T, d]` input embeddings of the
caption slots (`forward`); `JointEncoder` places them between `[CLS]` and `[SEP]`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# A frozen tower runs on blocks of this fixed shape (rows x a multiple of CHUNK_LEN tokens), in float32: CPU GEMM
# kernels give a row's result bits that depend on the block's shape (and, in bf16, on the row's place in it), so a
# fixed shape is what makes a caption's cached states the states a recomputation gives, whatever its batch.
CHUNK_ROWS, CHUNK_LEN = 16, 8


class FirstStageText(nn.Module):
    """An open_clip text tower's final token states (after `ln_final`), projected to the joint encoder's width.

    The tower runs as open_clip's `encode_text` does up to the pooling (token + position embeddings, the transformer
    with its causal mask, `ln_final`), over the tokens from start-of-text to end-of-text. The causal mask means a
    caption's states never depend on the padding after it, so batches are cut to their longest caption.

    A frozen tower (`trainable=False`) gives each caption's states once: they are computed in float32 (also under
    autocast) in fixed-shape blocks (`CHUNK_ROWS` captions of the same length rounded up to `CHUNK_LEN`) and, with
    `cache_states`, kept per caption, keyed by a digest of the tower's weights, the device and train / eval mode,
    so a cache never answers for other weights (a `load_state_dict` changes the digest). Only `project`, which
    trains, runs per batch. At most `max_cache_bytes` (1 GiB) of states are kept (then the cache starts afresh).

    Args:
        model_name: the open_clip model (a name or a local config in `mmrerank/retrieval/model_configs/`).
        width: the joint encoder's width (the projection's output).
        checkpoint: first-stage weights (`CLIPEncoder.save_weights` or a Lightning checkpoint); None keeps the init
            (when the weights come from a saved EDJE folder instead).
        pretrained: an open_clip pretrained tag, as for `CLIPEncoder`.
        trainable: fine-tune the tower (at the learning rate `EDJETraining.text_lr_scale` sets); False freezes it.
    """

    def __init__(self, model_name: str, width: int, checkpoint: str | None = None, pretrained: str | None = None,
                 trainable: bool = False) -> None:
        super().__init__()
        from mmrerank.retrieval.clip import CLIPEncoder

        encoder = CLIPEncoder(model_name, pretrained)
        if checkpoint:
            encoder.load_weights(checkpoint)
        clip = encoder.model
        if not hasattr(clip, "token_embedding"):
            raise ValueError(f"open_clip model {model_name!r} has no built-in text transformer (a custom or HF text "
                             "tower); the first_stage text side needs one with token_embedding / ln_final")
        self.model_name = model_name
        self.tokenizer = encoder.tokenizer
        self.token_embedding, self.transformer, self.ln_final = clip.token_embedding, clip.transformer, clip.ln_final
        self.positional_embedding = clip.positional_embedding
        self.register_buffer("causal_mask", clip.attn_mask, persistent=False)
        self.eot_token_id = self.tokenizer.eot_token_id
        self.trainable = trainable
        for p in self.parameters():
            p.requires_grad_(trainable)
        self.project = nn.Linear(self.token_embedding.embedding_dim, width)
        self.cache_states, self.max_cache_bytes, self._cache_bytes = True, 2**30, 0
        self._cache: dict[tuple, dict[bytes, Tensor]] = {}  # (weights digest, device, training) -> ids -> [n, w]
        self._stamp: tuple | None = None  # the tower tensors' (storage, version) when `_digest` was taken
        self._digest = ""

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def tower_parameters(self) -> list[nn.Parameter]:
        """The open_clip tower's parameters (everything but the projection)."""
        project = {id(p) for p in self.project.parameters()}
        return [p for p in self.parameters() if id(p) not in project]

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """open_clip tokens of `texts`, start-of-text to end-of-text, right-padded to the longest.

        Returns:
            `(ids [B, T], mask [B, T])`, `T <= context_length`; a caption cut at the context keeps its end-of-text.
        """
        ids = self.tokenizer(list(texts))  # [B, context_length], 0-padded
        lengths = (ids == self.eot_token_id).int().argmax(dim=1) + 1
        t = int(lengths.max()) if len(texts) else 1
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        return ids[:, :t], mask

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """`[B, T]` tokens -> `[B, T, width]` projected token states (padded slots hold garbage; the caller masks).

        Each distinct caption runs through the tower once (a t2i group repeats its caption once per candidate); a
        frozen tower's states come from `frozen_states`.
        """
        # each distinct (caption, length) once; the length column rides along in the last place
        unique, inverse = torch.cat([ids, mask.sum(1, keepdim=True).to(ids.dtype)], 1).unique(dim=0,
                                                                                             return_inverse=True)
        unique, lengths = unique[:, :-1], unique[:, -1]
        if self.trainable:
            t = ids.shape[1]
            x = self.token_embedding(unique) + self.positional_embedding[:t]
            x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask[:t, :t]))
        else:
            x = self.frozen_states(unique, lengths)
        return self.project(x)[inverse]

    def frozen_states(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """The frozen tower's float32 states of captions `ids [U, T]` with `lengths [U]` real tokens -> `[U, T, w]`
        (zero after each caption's end), from the cache where it has them (see the class docstring)."""
        cache = self._context_cache() if self.cache_states else {}
        keys = [row[:n].numpy().tobytes() for row, n in zip(ids.cpu(), lengths.tolist())]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        fresh = dict(zip(missing, self._tower_blocks(ids[missing], lengths[missing]))) if missing else {}
        if self.cache_states:
            added = sum(states.nbytes for states in fresh.values())
            if self._cache_bytes + added > self.max_cache_bytes:
                self._cache.clear()
                cache, self._cache_bytes = self._context_cache(), 0
            cache.update((keys[i], states) for i, states in fresh.items())
            self._cache_bytes += added
        out = ids.new_zeros((*ids.shape, self.token_embedding.embedding_dim), dtype=torch.float32)
        for i, (key, n) in enumerate(zip(keys, lengths.tolist())):
            out[i, :n] = fresh[i] if i in fresh else cache[key]
        return out

    def _tower_blocks(self, ids: Tensor, lengths: Tensor) -> list[Tensor]:
        """The tower over captions `[U, T]` in float32, in `CHUNK_ROWS x (multiple of CHUNK_LEN)` blocks of captions
        of about one length -> each caption's `[n_i, w]` states."""
        out: list[Tensor] = [torch.empty(0)] * len(ids)
        rounded = ((lengths + CHUNK_LEN - 1) // CHUNK_LEN * CHUNK_LEN).clamp(max=self.context_length)
        device = self.positional_embedding.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for t in rounded.unique().tolist():
                rows = (rounded == t).nonzero().squeeze(1)
                for start in range(0, len(rows), CHUNK_ROWS):
                    part = rows[start:start + CHUNK_ROWS]
                    block = ids.new_zeros(CHUNK_ROWS, t, device=device)
                    block[:len(part), :min(t, ids.shape[1])] = ids[part, :t]
                    x = self.token_embedding(block) + self.positional_embedding[:t]
                    x = self.ln_final(self.transformer(x, attn_mask=self.causal_mask[:t, :t]))
                    for j, i in enumerate(part.tolist()):
                        out[i] = x[j, :int(lengths[i])].clone()  # not a view: the block is freed
        return out

    def _context_cache(self) -> dict[bytes, Tensor]:
        """This tower's cache for its current weights, device and mode."""
        tower = [*self.tower_parameters(), self.causal_mask]
        stamp = tuple((t.data_ptr(), t._version) for t in tower)  # cheap: changes when weights are replaced / edited
        if stamp != self._stamp:
            digest = hashlib.sha256(self.model_name.encode())
            for t in tower:
                digest.update(t.detach().float().cpu().numpy().tobytes())
            self._stamp, self._digest = stamp, digest.hexdigest()
        return self._cache.setdefault((self._digest, str(self.positional_embedding.device), self.training), {})
