"""Per-modality input adapters (patch tokens) and output adapters (light cross-attention decoders) of MultiMAE.

Both follow MultiMAE (Bachmann et al. 2022, Sec. 3.1-3.3): an input adapter is a linear projection of
non-overlapping patches plus fixed 2-D sin-cos position embeddings and a learned modality embedding; an output
adapter builds queries for its own modality (its projected visible tokens in place, mask tokens elsewhere, with
position embeddings), lets them cross-attend to all encoded tokens once, runs a few self-attention layers and
predicts the pixels of every patch. The self-attention layers are timm's ViT ``Block``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from visarl.mae.patches import sincos_pos_embed_2d


def norm_layer(dim: int, **kwargs: Any) -> nn.LayerNorm:
    """LayerNorm with eps 1e-6, as in ViT/MAE/MultiMAE (``kwargs``: timm passes device/dtype)."""
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


def set_fused_attn(module: nn.Module, fused: bool) -> None:
    """Switch every attention layer under ``module`` between ``F.scaled_dot_product_attention`` and the eager path.

    timm's ``Attention`` reads its ``fused_attn`` attribute at each call; :class:`CrossAttention` does the same.
    """
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


class PatchInputAdapter(nn.Module):
    """Image ``[B, C, H, W]`` -> tokens ``[B, N, D]``: patch projection + fixed position + learned modality embed."""

    def __init__(self, channels: int, image_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.channels, self.image_size, self.patch_size = channels, image_size, patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        # a stride-p convolution is exactly a shared linear map of each flattened p x p patch
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        # fixed, so not saved: rebuilt from the numbers above
        self.register_buffer("pos_embed", sincos_pos_embed_2d(self.grid, dim)[None], persistent=False)  # [1, N, D]
        self.modality_embed = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        # MAE: initialise the projection like a linear layer, not a convolution
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # [B, D, gh, gw] -> [B, N, D], row-major like patchify
        return x + self.pos_embed + self.modality_embed


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``[B, Nq, D]`` over a context ``[B, Nc, D]`` (fused or eager, like timm)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, fused_attn: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, nq, d = x.shape
        nc = context.shape[1]
        q = self.q(x).reshape(b, nq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, Nq, hd]
        k, v = self.kv(context).reshape(b, nc, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, h, Nq, Nc]
            out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class SpatialDecoder(nn.Module):
    """Light decoder for one output: queries of its source modality cross-attend to all encoded tokens.

    ``context_modalities`` is the encoder's token layout (each modality a block of ``grid[0]*grid[1]`` tokens, in
    this order); ``query_index`` says which block holds this decoder's own modality. Output ``[B, N, p*p*C]``.
    ``residual=False`` is MultiMAE's ``SpatialOutputAdapter``: the cross-attention output replaces the queries and
    the pixel head reads the last block directly; ``True`` adds a residual around the cross-attention and a
    LayerNorm before the head.
    """

    def __init__(
        self,
        out_channels: int,
        patch_size: int,
        grid: tuple[int, int],
        num_context_modalities: int,
        query_index: int,
        encoder_dim: int,
        dim: int = 256,
        depth: int = 3,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        fused_attn: bool = True,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.grid, self.query_index, self.residual = grid, query_index, residual
        self.num_tokens = grid[0] * grid[1]
        self.proj_context = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # decoder-side embeddings tell every token (visible or masked) where and which modality it is
        self.register_buffer("pos_embed", sincos_pos_embed_2d(grid, dim)[None], persistent=False)  # [1, N, d]
        self.modality_embed = nn.Parameter(torch.zeros(1, num_context_modalities, 1, dim))
        self.query_norm, self.context_norm = norm_layer(dim), norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads, fused_attn=fused_attn)
        self.mlp_norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(dim) if residual else nn.Identity()
        self.head = nn.Linear(dim, patch_size * patch_size * out_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        set_fused_attn(self, fused_attn)

    def forward(self, encoded: Tensor, ids_visible: Tensor, num_global: int = 0) -> Tensor:
        """``encoded [B, G+K, De]`` (global tokens first), ``ids_visible [B, K]`` -> patches ``[B, N, p*p*C]``."""
        x = self.proj_context(encoded)  # [B, G+K, d]
        glob, vis = x[:, :num_global], x[:, num_global:]
        b, _, d = vis.shape
        m = self.modality_embed.shape[1]
        idx = ids_visible[..., None].expand(-1, -1, d)  # [B, K, d]
        # the full token sequence [B, M*N, d]: visible tokens back in place, a mask token everywhere else
        # (dtype casts: under autocast the projected tokens are bf16/fp16 while the parameters stay fp32)
        full = torch.scatter(self.mask_token.to(vis.dtype).expand(b, m * self.num_tokens, d), 1, idx, vis)
        emb = (self.pos_embed[:, None] + self.modality_embed).reshape(1, m * self.num_tokens, d)
        full = full + emb.to(full.dtype)
        start = self.query_index * self.num_tokens
        queries = full[:, start : start + self.num_tokens]  # [B, N, d]
        context = torch.cat([glob, torch.gather(full, 1, idx)], dim=1)  # [B, G+K, d], now with embeddings
        x = self.cross_attn(self.query_norm(queries), self.context_norm(context))
        if self.residual:  # keeps each query's own position and content; MultiMAE relies on attention alone
            x = queries + x
        x = x + self.mlp(self.mlp_norm(x))
        x = self.blocks(x)
        return self.head(self.norm(x))
