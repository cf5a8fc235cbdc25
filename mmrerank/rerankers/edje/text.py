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

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class FirstStageText(nn.Module):
    """An open_clip text tower's final token states (after `ln_final`), projected to the joint encoder's width.

    The tower runs as open_clip's `encode_text` does up to the pooling (token + position embeddings, the transformer
    with its causal mask, `ln_final`), over the tokens from start-of-text to end-of-text. The causal mask means a
    caption's states never depend on the padding after it, so batches are cut to their longest caption.

    Args:
        model_name: the open_clip model (a name or a local config in `mmrerank/retrieval/model_configs/`).
        width: the joint encoder's width (the projection's output).
        checkpoint: first-stage weights (`CLIPEncoder.save_weights` or a Lightning checkpoint); None keeps the init
            (when the weights come from a saved EDJE folder instead).
        pretrained: an open_clip pretrained tag, as for `CLIPEncoder`.
        trainable: fine-tune the tower (at the learning rate `EDJEModule.text_lr_scale` sets); False freezes it.
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

        Each distinct caption runs through the tower once (a t2i group repeats its caption once per candidate).
        """
        unique, inverse = ids.unique(dim=0, return_inverse=True)
        t = ids.shape[1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            x = self.token_embedding(unique) + self.positional_embedding[:t]
            x = self.transformer(x, attn_mask=self.causal_mask[:t, :t])
            x = self.ln_final(x)
        return self.project(x)[inverse]
