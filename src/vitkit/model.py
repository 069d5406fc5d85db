"""The Vision Transformer of "An Image is Worth 16x16 Words" (Dosovitskiy et al., ICLR 2021).

Reads top to bottom like Section 3.1 of the paper:
image -> patches -> linear projection -> [class] token + position embeddings
-> L pre-norm encoder blocks (MSA, MLP) -> LayerNorm -> pooled token -> head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from . import fastpath
from .config import ViTConfig, conv_stem_plan, patch_problem
from .fastpath import explicit_attention
from .posemb import resample_pos_embed, sincos_2d

if TYPE_CHECKING:
    from os import PathLike

POS_CACHE_SIZE = 8  # grids whose resampled position embeddings inference keeps


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
        problem = patch_problem(tuple(x.shape[-2:]), self.patch_size)
        if problem:
            raise ValueError(problem)
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), N = HW / P^2


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

    def forward(self, x: torch.Tensor, return_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(QK^T / sqrt(d)) V per head, heads concatenated, then projected; with
        return_weights the attention matrices (B, heads, N, N) are computed explicitly and returned."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        drop = self.attn_drop if self.training else 0.0
        weights = None
        if return_weights:
            x, weights = explicit_attention(q, k, v, self.scale, drop)
        else:
            x = fastpath.attend(q, k, v, self.scale, drop)
        x = x.transpose(1, 2).reshape(b, n, d)
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

    def forward(self, x: torch.Tensor, return_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.norm1(x), return_weights)
        x = x + self.drop_path(a)  # Eq. 2
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # Eq. 3
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
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if config.distill_token else None
        r = config.register_tokens
        self.reg_token = nn.Parameter(torch.zeros(1, r, d)) if r else None  # registers: the head ignores them
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
        if config.distill_token:  # the distillation token's own classifier
            self.head_dist = nn.Linear(rep or d, config.num_classes) if config.num_classes else nn.Identity()
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}  # inference tables per grid
        self._pos_cache_stamp: tuple | None = None
        self.init_weights()

    @classmethod
    def from_name(cls, name: str, **overrides) -> ViT:
        from .config import variant

        return cls(variant(name, **overrides))

    # ---- opening and saving, done elsewhere (vitkit.open_model is the way to open a model) -------
    @classmethod
    def from_pretrained(cls, path: str | PathLike[str], **options) -> ViT:
        """vitkit.load of a local folder or file, as a class method (its options)."""
        from .formats.reader import load_checkpoint

        return load_checkpoint(cls, path, **options)[0]

    def save_pretrained(self, directory: str | PathLike[str], classes: list[str] | None = None,
                        data: dict | None = None) -> PathLike[str]:
        """vitkit.checkpoint.save_pretrained: a model folder that every vitkit command opens."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, classes=classes, data=data)

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
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=0.02)  # unlike the class token: the two must differ
        for head in self.heads():
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def train(self, mode: bool = True) -> ViT:
        """As nn.Module.train; also forgets the resampled position embeddings: a fused optimizer
        step changes weights without bumping their version, so evaluation after training
        steps must not read tables of the weights before them."""
        self._pos_cache.clear()
        return super().train(mode)

    # ---- forward ----------------------------------------------------------------------
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """Position embeddings for a patch grid; 2D-interpolated when it is not the trained one.

        Inference at another size reuses the table from a small per-grid cache, so a stream of
        same-sized images resamples once. A symbolic grid (an export with dynamic image size)
        always resamples, so the graph computes the table from H and W; resampling to the
        trained grid returns it unchanged, so that costs no accuracy.
        """
        pe = self.pos_embed
        if pe is None:
            return None
        if not all(isinstance(g, int) for g in grid):
            return self._resample_pos_embed(grid)
        if grid == self.config.grid_size:
            return pe
        if (torch.is_grad_enabled() and pe.requires_grad) or torch.compiler.is_compiling():
            return self._resample_pos_embed(grid)  # training or tracing: nothing cached
        stamp = (id(pe), pe.data_ptr(), pe._version, pe.dtype, pe.device, torch.is_inference_mode_enabled())
        if self._pos_cache_stamp != stamp:  # new or changed weights: the old tables are stale
            self._pos_cache.clear()
            self._pos_cache_stamp = stamp
        key = (int(grid[0]), int(grid[1]))
        table = self._pos_cache.get(key)
        if table is None:
            if len(self._pos_cache) >= POS_CACHE_SIZE:
                self._pos_cache.pop(next(iter(self._pos_cache)))
            table = self._pos_cache[key] = self._resample_pos_embed(key).detach()
        return table

    def _resample_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embeddings computed for `grid` (no cache, no shortcut)."""
        if self.config.pos_embed == "sincos2d":
            pe = sincos_2d(grid, self.config.hidden_size).to(self.pos_embed)
            return torch.cat([self.pos_embed[:, : self.config.num_prefix_tokens], pe], dim=1)
        return resample_pos_embed(
            self.pos_embed, grid, self.config.grid_size, self.config.num_prefix_tokens
        )

    def prefix_tokens(self, batch: int) -> torch.Tensor | None:
        """The tokens before the patches, (B, prefix, D): the class token, the distillation
        token, then the registers."""
        parts = [t.expand(batch, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token)
                 if t is not None]
        return torch.cat(parts, dim=1) if parts else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos."""
        p = self.config.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = self.patch_embed(x)  # x_p^i E for every patch
        prefix = self.prefix_tokens(x.shape[0])
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        pos = self.pos_embed_for(grid)
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

    def forward_intermediates(self, x: torch.Tensor, layers: int | list[int] | None = None,
                              output: Literal["tokens", "grid"] = "tokens", norm: bool = False
                              ) -> Intermediates:
        """The outputs of chosen encoder blocks, for probing a layer or feeding a dense head.

        layers: None for every block, n for the last n, or a list of block indices (0-based,
        negative from the end). output "tokens": patch tokens (B, N, D); "grid": patch grids
        (B, D, gh, gw). Prefix tokens (the class token) come separately, (B, prefix, D).
        norm applies the final LayerNorm to each. Blocks after the last chosen one are skipped.
        """
        if output not in ("tokens", "grid"):
            raise ValueError(f"output {output!r}: expected tokens or grid")
        chosen = _block_indices(layers, len(self.blocks))
        p, n_prefix = self.config.patch_size, self.config.num_prefix_tokens
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = self.embed(x)
        patches, prefix = [], []
        for i, block in enumerate(self.blocks[: max(chosen) + 1]):
            x = block(x)[0]
            if i in chosen:
                y = self.norm(x) if norm else x
                z = y[:, n_prefix:]
                if output == "grid":
                    z = z.transpose(1, 2).reshape(z.shape[0], z.shape[2], *grid)
                patches.append(z)
                prefix.append(y[:, :n_prefix])
        return Intermediates(chosen, patches, prefix)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "mean":
            return x[:, self.config.num_prefix_tokens :].mean(dim=1)
        return x[:, 0]  # Eq. 4: y = LN(z_L^0), the class token after the final LayerNorm

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens, apply the optional tanh layer, then the linear classifier (Eq. 4).
        With a distillation token: the average of the class head's and the distillation head's
        logits (pre_logits: the class token's features)."""
        y = self.pre_logits(self.pool(x))
        if pre_logits:
            return y
        if self.config.distill_token:
            return (self.head(y) + self.head_dist(self.pre_logits(x[:, 1]))) / 2
        return self.head(y)

    def heads(self) -> list[nn.Module]:
        """The classifiers: the head, and the distillation head when there is one."""
        return [self.head, self.head_dist] if self.config.distill_token else [self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: Eq. 1 (embed), Eq. 2-3 (blocks), Eq. 4 (norm, pool, head). With class-token
        pooling vitkit.fastpath computes the same logits running the last block for the class
        token alone."""
        if fastpath.uses_class_token_path(self):
            return fastpath.forward_class_token(self, x)
        return self.forward_head(self.forward_features(x))

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
        for name in ["head", "head_dist"] if self.config.distill_token else ["head"]:
            head = nn.Identity()
            if num_classes:
                head = nn.Linear(in_features, num_classes, device=ref.device, dtype=ref.dtype)
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
            setattr(self, name, head)
        self.config = self.config.replace(num_classes=num_classes)

    def drop_pre_logits(self) -> None:
        """Remove the tanh pre-logits layer; the head then reads the pooled token directly."""
        self.pre_logits = nn.Identity()
        self.config = self.config.replace(representation_size=None)
        self.reset_classifier(self.config.num_classes)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@dataclass
class Intermediates:
    """What forward_intermediates returns: per chosen block, its patch tokens or grid and its
    prefix tokens, in block order."""

    layers: list[int]  # 0-based block indices
    patches: list[torch.Tensor]  # (B, N, D) tokens or (B, D, gh, gw) grids
    prefix: list[torch.Tensor]  # (B, prefix, D); prefix = 0 without a class token

    def tokens(self, i: int = -1) -> torch.Tensor:
        """All tokens (B, prefix + N, D) of the i-th chosen block, as the block output them
        (for output="tokens")."""
        if self.patches[i].ndim != 3:
            raise ValueError("tokens() needs output='tokens'")
        return torch.cat([self.prefix[i], self.patches[i]], dim=1)


def _block_indices(layers: int | list[int] | None, depth: int) -> list[int]:
    """Sorted 0-based block indices: None = all, an int n = the last n, a list = those blocks."""
    if layers is None:
        return list(range(depth))
    if isinstance(layers, int):
        if not 1 <= layers <= depth:
            raise ValueError(f"layers={layers}: the model has {depth} blocks (ask for 1..{depth})")
        return list(range(depth - layers, depth))
    out = set()
    for i in layers:
        if not -depth <= i < depth:
            raise ValueError(f"layer {i}: the model has {depth} blocks (indices 0..{depth - 1} or negative)")
        out.add(i % depth)
    if not out:
        raise ValueError("layers: an empty list")
    return sorted(out)


def _lecun_normal_(w: torch.Tensor) -> None:
    """Truncated normal with variance 1 / fan_in (flax's lecun_normal)."""
    fan_in = w[0].numel()
    # std of a unit normal truncated to [-2, 2] is 0.8796...; divide it out as flax does
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
