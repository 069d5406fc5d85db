"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021).

Reads top to bottom like Section 3.1 of the paper:
image -> patches -> linear projection -> [class] token + position embeddings
-> L pre-norm encoder blocks (MSA, MLP) -> LayerNorm -> pooled token -> head.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig
from .posemb import resample_pos_embed, sincos_2d


def conv_stem_plan(channels: int, stride: int) -> list[tuple[int, int]]:
    """(out channels, stride) of each conv of the stem."""
    k = stride.bit_length() - 1
    if k == 0:
        return [(channels, 1), (channels, 1)]
    return [(max(channels >> k, 1), 1)] + [(max(channels >> (k - i), 1), 2) for i in range(1, k + 1)]


class ConvStem(nn.Module):
    """The paper's hybrid input (Section 3.1): a small CNN computes the feature map that is
    then cut into patches. 3x3 conv-BN-GELU layers: with stride 1 two of `channels` width;
    with stride 2^k one at full resolution and k that each halve the map and double the width,
    ending at `channels`."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, s in conv_stem_plan(channels, stride):
            conv = nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False)
            layers += [conv, nn.BatchNorm2d(c_out), nn.GELU()]
            c_in = c_out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PatchEmbedding(nn.Module):
    """Cut the image into non-overlapping P x P patches over all channels, flatten each and
    project it with one shared linear map to D dimensions (Eq. 1).

    A convolution with kernel = stride = P computes exactly that map: each output position
    is the dot product of one flattened patch with each of the D filters.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        in_ch = config.num_channels
        self.stem = None
        k = config.patch_size
        if config.stem == "conv":
            self.stem = ConvStem(in_ch, config.stem_channels, config.stem_stride)
            in_ch, k = config.stem_channels, config.patch_size // config.stem_stride
        self.proj = nn.Conv2d(in_ch, config.hidden_size, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch size {p}")
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), N = HW / P^2


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QK^T * scale) V; returns the output and the weights. PyTorch's softmax kernels
    compute in fp32 for bf16 inputs and round only the result, so no fp32 copy is made here."""
    # k.contiguous(): K^T is then a transposed view the batched product reads as it is,
    # which is cheaper than the strided copy that transposing the qkv slice would need
    a = ((q * scale) @ k.contiguous().transpose(-2, -1)).softmax(dim=-1).to(q.dtype)
    return F.dropout(a, dropout, dropout > 0) @ v, a


def _attention_output(q, k, v, scale: float, dropout: float) -> torch.Tensor:
    return explicit_attention(q, k, v, scale, dropout)[0]


def _checkpointed_attention(q, k, v, scale: float, dropout: float, max_elements: int = 2**20) -> torch.Tensor:
    """Explicit attention that keeps no N x N matrix for the backward pass: each slice of
    the batch is recomputed there, one at a time, so at most max_elements scores are alive."""
    b, h, n, _ = q.shape
    step = max(1, max_elements // (h * n * k.shape[2]))
    outs = [checkpoint(_attention_output, q[i:i + step], k[i:i + step], v[i:i + step], scale, dropout,
                       use_reentrant=False) for i in range(0, b, step)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class Attention(nn.Module):
    """Multi-head scaled dot-product self-attention with one fused qkv projection."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.attn_drop = config.attention_dropout
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False, queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries=m: outputs for the first m tokens only (keys and values still span all)."""
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        if queries is None:
            qkv = self.qkv(x).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        else:
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :queries], w[:d], None if bias is None else bias[:d])
            q = q.view(b, queries, h, hd).transpose(1, 2)
            kv = F.linear(x, w[d:], None if bias is None else bias[d:])
            k, v = kv.view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        weights = None
        # PyTorch's fused CPU kernel has no fast bf16 path (its backward is ~6x slower than
        # the plain products here), so bf16 on the CPU takes the explicit route too.
        explicit = q.device.type == "cpu" and q.dtype == torch.bfloat16
        if return_weights:
            x, weights = explicit_attention(q, k, v, self.scale, drop)
        elif explicit and torch.is_grad_enabled() and q.requires_grad:
            # Recompute the N x N matrices in the backward pass instead of keeping them (the
            # fused kernel keeps none either): training memory stays at the fused kernel's.
            x = _checkpointed_attention(q, k, v, self.scale, drop)
        elif explicit:
            x = explicit_attention(q, k, v, self.scale, drop)[0]
        else:  # fused kernel; never materializes the N x N matrix when it can avoid it
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        x = x.transpose(1, 2).reshape(b, q.shape[2], d)
        return self.proj_drop(self.proj(x)), weights


class MLP(nn.Module):
    """Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_size)
        self.act = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.drop1 = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.mlp_size, config.hidden_size)
        self.drop2 = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a block's residual branch for whole samples while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block (Eq. 2, 3): x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, return_weights: bool = False, queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries=m: only the first m tokens come out (their values are unchanged)."""
        a, weights = self.attn(self.norm1(x), return_weights, queries)
        x = (x if queries is None else x[:, :queries]) + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class PreLogits(nn.Module):
    """The pre-training head's hidden layer: Linear then tanh (representation_size wide)."""

    def __init__(self, in_features: int, representation_size: int):
        super().__init__()
        self.dense = nn.Linear(in_features, representation_size)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class ViT(nn.Module):
    """Vision Transformer. Build from a ViTConfig, or from a variant name: ViT.from_name("B/16")."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.patch_embed = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.class_token else None
        n_pos = config.num_patches + config.num_prefix_tokens
        if config.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, d))
        elif config.pos_embed == "sincos2d":
            table = sincos_2d(config.grid_size, d)
            table = torch.cat([torch.zeros(1, config.num_prefix_tokens, d), table], dim=1)
            self.register_buffer("pos_embed", table, persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(config.dropout)
        n = config.num_layers
        rates = [config.drop_path * i / max(n - 1, 1) for i in range(n)]  # linear over depth
        self.blocks = nn.ModuleList(EncoderBlock(config, r) for r in rates)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        rep = config.representation_size
        self.pre_logits = PreLogits(d, rep) if rep else nn.Identity()
        self.head = nn.Linear(rep or d, config.num_classes) if config.num_classes else nn.Identity()
        self.init_weights()

    @classmethod
    def from_name(cls, name: str, **overrides) -> ViT:
        from .config import variant

        return cls(variant(name, **overrides))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **options) -> ViT:
        """Load an official .npz, timm, Hugging Face, torchvision or vitkit checkpoint;
        the options are those of vitkit.loading.load (image_size, num_classes, strict, ...)."""
        from .loading import load

        return load(path, **options)

    # ---- initialization -------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialization of the official JAX code, in one place:
        - patch embedding (and pre-logits): LeCun normal (truncated, fan-in), zero bias;
        - every other Linear: Xavier uniform; MLP biases N(0, 1e-6), attention biases zero;
        - position embeddings N(0, 0.02); class token zero; LayerNorm weight 1, bias 0;
        - classifier head: all zeros, so a new head starts from uniform predictions.
        """
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    if ".mlp." in f".{name}.":
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        _lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.pre_logits, PreLogits):
            _lecun_normal_(self.pre_logits.dense.weight)
            nn.init.zeros_(self.pre_logits.dense.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ---- forward ----------------------------------------------------------------------
    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """Position embeddings for a patch grid; 2D-interpolated when it is not the trained one."""
        if self.pos_embed is None or grid == self.config.grid_size:
            return self.pos_embed
        if self.config.pos_embed == "sincos2d":
            pe = sincos_2d(grid, self.config.hidden_size).to(self.pos_embed)
            return torch.cat([self.pos_embed[:, : self.config.num_prefix_tokens], pe], dim=1)
        return resample_pos_embed(
            self.pos_embed, grid, self.config.grid_size, self.config.num_prefix_tokens
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images to the encoder's input sequence: patches, class token, position embeddings."""
        p = self.config.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = self._pos_embed_for(grid)
        if pos is not None:
            x = x + pos
        return self.pos_drop(x)

    def forward_features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """All output tokens (B, prefix + N, D) after the final LayerNorm.

        With return_attention=True also every layer's attention matrices (B, heads, T, T);
        off by default, so the fused attention kernel runs and nothing extra is kept.
        """
        x = self.embed(x)
        attentions = []
        for block in self.blocks:
            x, w = block(x, return_attention)
            if return_attention:
                attentions.append(w)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "mean":
            return x[:, self.config.num_prefix_tokens :].mean(dim=1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens, apply the optional tanh layer, then the linear classifier."""
        x = self.pre_logits(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. With class-token pooling only the class token of the last block reaches the
        head, so that block computes its query, attention output and MLP for that token alone
        (about 1/L of the work saved; the logits are the same)."""
        if self.config.pool != "cls" or len(self.blocks) == 0:
            return self.forward_head(self.forward_features(x))
        x = self.embed(x)
        for block in self.blocks[:-1]:
            x, _ = block(x)
        x, _ = self.blocks[-1](x, queries=1)
        return self.forward_head(self.norm(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the logits, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return self(x).float().softmax(dim=-1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention probabilities, each (B, heads, T, T)."""
        return self.forward_features(x, return_attention=True)[1]

    # ---- fine-tuning ------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a zero-initialized one for num_classes (the paper's fine-tuning)."""
        rep = self.config.representation_size
        in_features = rep or self.config.hidden_size
        ref = self.norm.weight
        if num_classes:
            head = nn.Linear(in_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.head = head
        else:
            self.head = nn.Identity()
        self.config = self.config.replace(num_classes=num_classes)

    def drop_pre_logits(self) -> None:
        """Remove the tanh pre-logits layer; the head then reads the pooled token directly."""
        self.pre_logits = nn.Identity()
        self.config = self.config.replace(representation_size=None)
        self.reset_classifier(self.config.num_classes)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _lecun_normal_(w: torch.Tensor) -> None:
    """Truncated normal with variance 1 / fan_in (flax's lecun_normal)."""
    fan_in = w[0].numel()
    # std of a unit normal truncated to [-2, 2] is 0.8796...; divide it out as flax does
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
