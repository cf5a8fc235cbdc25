"""EDJE's token-compression adapter: m learned queries summarise a vision tower's patch tokens.

The adapter runs offline, once per image; its m output tokens (already in the joint encoder's width) are what the
token store keeps. Paper configuration: 576 patch tokens of width 1024 -> 64 tokens of width 384.

`TokenCompressionAdapter` is mmrerank's layout; `OfficialCompressionAdapter` is the authors' (the released
checkpoint's, `EDJEConfig(adapter="official")`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenCompressionAdapter(nn.Module):
    """Cross-attention pooling of patch tokens into `num_queries` tokens, then an MLP block and a projection.

    Layout (all in `in_dim` until the last step):

    1. m learned queries (LayerNorm-ed) attend over the LayerNorm-ed patch tokens with multi-head attention; the
       attention's key/value projections act on the patch tokens. The attention output is added to the queries, so a
       query starts from its learned value and gathers image content on top of it.
    2. A residual pre-LayerNorm MLP block, `in_dim -> mlp_ratio * in_dim -> in_dim` with GELU.
    3. A linear projection `in_dim -> out_dim` (the joint encoder's width).

    Args:
        in_dim: width of the vision tower's patch tokens (1024 for ViT-L).
        num_queries: m, the number of output tokens (64 in the paper).
        out_dim: width of the joint encoder (384 for MiniLM-L12-H384).
        num_heads: attention heads; must divide `in_dim`.
        mlp_ratio: hidden width of the MLP block as a multiple of `in_dim` (8 in the paper: 1024 -> 8192 -> 1024).
        dropout: dropout on attention weights and inside the MLP (0 for the frozen offline use).
        num_patches: when set, a learned position embedding per patch slot is added to the patch tokens first.
            ViT tokens already carry their positions; a CNN feature map's do not, and without positions the
            cross-attention is a set function of the patches, blind to "left of" / "above".
    """

    def __init__(self, in_dim: int, num_queries: int, out_dim: int, num_heads: int, mlp_ratio: int = 8,
                 dropout: float = 0.0, num_patches: int | None = None):
        super().__init__()
        if in_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide in_dim={in_dim}")
        self.in_dim, self.num_queries, self.out_dim = in_dim, num_queries, out_dim
        # Small init, as for ViT position embeddings, so that early on the queries do not dominate the residual.
        self.queries = nn.Parameter(torch.randn(num_queries, in_dim) * 0.02)
        self.patch_pos = nn.Parameter(torch.randn(num_patches, in_dim) * 0.02) if num_patches else None
        self.norm_q = nn.LayerNorm(in_dim)
        self.norm_kv = nn.LayerNorm(in_dim)
        self.attn = nn.MultiheadAttention(in_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, mlp_ratio * in_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * in_dim, in_dim)
        )
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, patches: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Compress patch tokens.

        Args:
            patches: `[B, P, in_dim]` patch tokens of a frozen vision tower.
            padding_mask: optional `[B, P]` bool, True where a patch is padding (ignored by the attention).

        Returns:
            `[B, num_queries, out_dim]` compressed tokens.
        """
        if patches.dim() != 3 or patches.shape[-1] != self.in_dim:
            raise ValueError(f"expected patches [B, P, {self.in_dim}], got {tuple(patches.shape)}")
        q = self.queries.to(patches.dtype).unsqueeze(0).expand(patches.shape[0], -1, -1)  # [B, m, in_dim]
        kv = self.norm_kv(patches)
        if self.patch_pos is not None:  # added after the norm, where features and positions share one scale
            if patches.shape[1] != len(self.patch_pos):
                raise ValueError(f"expected {len(self.patch_pos)} patches (num_patches), got {patches.shape[1]}")
            kv = kv + self.patch_pos.to(patches.dtype)
        attended, _ = self.attn(self.norm_q(q), kv, kv, key_padding_mask=padding_mask, need_weights=False)
        x = q + attended  # [B, m, in_dim]
        x = x + self.mlp(self.norm_mlp(x))
        return self.proj(x)


class OfficialCompressionAdapter(nn.Module):
    """The EDJE authors' adapter layout, parameter names included, so their checkpoint's `vision_projection.*`
    loads as is (read in github.com/shahafwa/EDJE, token_compression.py, commit 56c0c23).

    It differs from `TokenCompressionAdapter` in three places: separate `key` / `value` Linears act on the patch
    tokens before the attention's own in-projections, nothing is LayerNorm-ed before the attention, and the
    attention output replaces the queries (no query residual):

    1. `a = MHA(query, key(patches), value(patches))`, `[B, m, in_dim]`.
    2. `x = a + fc2(act(fc1(layernorm(a))))`.
    3. `projection(x)`, `[B, m, out_dim]`.

    Args:
        in_dim: width of the patch tokens (1024 for SigLIP2 ViT-L).
        num_queries: m (64 in the released checkpoint).
        out_dim: the joint encoder's width (384 for MiniLM-L12-H384).
        num_heads: attention heads (the authors take the vision tower's: 16 for ViT-L).
        mlp_dim: hidden width of the MLP (8192 in the released checkpoint).
        eps: the LayerNorm's epsilon (the authors take the vision tower's `layer_norm_eps`, 1e-6 for SigLIP).
        act: the MLP's activation, a transformers `ACT2FN` name (the authors take the joint encoder's `hidden_act`).
    """

    def __init__(self, in_dim: int, num_queries: int, out_dim: int, num_heads: int, mlp_dim: int, eps: float = 1e-6,
                 act: str = "gelu"):
        super().__init__()
        from transformers.activations import ACT2FN

        if in_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide in_dim={in_dim}")
        if act not in ACT2FN:
            raise ValueError(f"unknown activation {act!r}; transformers' ACT2FN names: {sorted(ACT2FN)}")
        self.in_dim, self.num_queries, self.out_dim = in_dim, num_queries, out_dim
        self.query = nn.Parameter(torch.randn(1, num_queries, in_dim))  # [1, m, in_dim], the authors' shape
        self.key, self.value = nn.Linear(in_dim, in_dim), nn.Linear(in_dim, in_dim)
        self.attention = nn.MultiheadAttention(in_dim, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(in_dim, eps=eps)
        self.mlp = _FeedForward(in_dim, mlp_dim, ACT2FN[act])
        self.projection = nn.Linear(in_dim, out_dim)

    def forward(self, patches: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Compress patch tokens.

        Args:
            patches: `[B, P, in_dim]` patch tokens of the frozen vision tower.
            padding_mask: optional `[B, P]` bool, True where a patch is padding (the authors' towers never pad).

        Returns:
            `[B, num_queries, out_dim]` compressed tokens.
        """
        if patches.dim() != 3 or patches.shape[-1] != self.in_dim:
            raise ValueError(f"expected patches [B, P, {self.in_dim}], got {tuple(patches.shape)}")
        query = self.query.to(patches.dtype).expand(patches.shape[0], -1, -1)
        attended, _ = self.attention(query, self.key(patches), self.value(patches), key_padding_mask=padding_mask,
                                     need_weights=False)
        x = attended + self.mlp(self.layernorm(attended))
        return self.projection(x)


class _FeedForward(nn.Module):
    """`fc2(act(fc1(x)))`, named `mlp.fc1` / `mlp.fc2` as in the authors' state dict."""

    def __init__(self, dim: int, hidden: int, act: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act, nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
