"""What a run learns from: an objective owns the model's training head, the loss and its
metric, so the training loop knows nothing of classification.

- Classification: the paper's supervised training (cross-entropy on the class head).
- MultiLabel: an image carries any number of tags (multi-hot targets): a sigmoid per tag,
  binary cross-entropy.
- MaskedAutoencoder (He et al., CVPR 2022): 75% of the patches are dropped, the encoder
  runs on the visible 25% only (which is where its speed comes from), a light decoder
  reconstructs the normalized pixels of the dropped ones.
- MaskedPatchPrediction (the paper's Section 4.6, Appendix B.1.2): 50% of the patch
  embeddings are corrupted (80% replaced by a learnable [mask] embedding, 10% by another
  patch's embedding, 10% kept) and the 3-bit mean colour of each corrupted patch
  (8 levels per channel: 512 classes for RGB) is predicted from its output token.

Self-supervised objectives wrap the encoder (a ViT without a head, `num_classes=0`) in a
module whose `encoder` is what the run publishes as model.safetensors; the wrapper's whole
state (decoder included) goes into state.pt, so a run resumes exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig
from ..data.arrays import iterate_eval
from ..data.preprocess import normalize
from ..inference import as_runner
from ..model import EncoderBlock, ViT
from ..posemb import sincos_2d

ObjectiveName = Literal["classification", "multilabel", "mae", "mpp"]
SUPERVISED = ("classification", "multilabel")  # objectives that learn the class head from labels


@dataclasses.dataclass
class PretrainConfig:
    """Self-supervised pre-training (``vitkit pretrain``): which objective and its sizes."""

    objective: Literal["mae", "mpp"] = "mae"
    mask_ratio: float | None = None  # MAE 0.75, MPP 0.5 (the papers' values) when unset
    decoder_size: int = 128  # MAE decoder width, depth and heads: light, as in the MAE paper
    decoder_layers: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # MAE target: each patch's pixels normalized by their mean and std
    color_bits: int = 3  # MPP target: mean colour per channel in 2**bits levels

    def validate(self) -> None:
        ratio = self.ratio
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"--pretrain.mask_ratio {ratio}: must be between 0 and 1 (exclusive)")
        if self.decoder_size % self.decoder_heads:
            raise ValueError(f"--pretrain.decoder_size {self.decoder_size} is not divisible by "
                             f"--pretrain.decoder_heads {self.decoder_heads}")
        if not 1 <= self.color_bits <= 8:
            raise ValueError(f"--pretrain.color_bits {self.color_bits}: must be 1 to 8")

    @property
    def ratio(self) -> float:
        if self.mask_ratio is not None:
            return self.mask_ratio
        return 0.75 if self.objective == "mae" else 0.5


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C), patches in the order the patch embedding reads them."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def random_keep(b: int, n: int, ratio: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, which patches stay visible: indices (B, n_keep) and a mask (B, N) that is
    1 where a patch is masked. Exactly round(N * ratio) patches are masked in every sample."""
    n_mask = min(max(round(n * ratio), 1), n - 1)
    order = torch.rand(b, n, device=device).argsort(dim=1)
    keep = order[:, : n - n_mask].sort(dim=1).values
    mask = torch.ones(b, n, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


class Classification:
    """Supervised training: cross-entropy on the class head; the metric is correct top-1."""

    name = "classification"

    def wrap(self, model: ViT, spec) -> nn.Module:
        return model

    def published(self, model: nn.Module) -> ViT:
        return model

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        hard = y.argmax(1) if y.ndim == 2 else y
        return loss, (logits.detach().argmax(1) == hard).sum()


class MultiLabel(Classification):
    """Multi-label training: every tag is its own yes/no question, so each logit gets a sigmoid
    and the loss is binary cross-entropy with logits against the multi-hot targets. BCE rather
    than a softmax: the tags' probabilities are independent and need not sum to one, so an image
    can be confidently both "dog" and "grass". Label smoothing s moves each target towards 1/2
    (targets * (1 - s) + s / 2), the two-outcome analogue of smoothing over classes. MixUp and
    CutMix mix multi-hot vectors convexly, which is still a valid per-tag target.

    The metric counted per batch is per-tag accuracy: the fraction of (image, tag) decisions at
    threshold 0.5 that match the targets (rounded at 0.5 too, for mixed ones), summed per image
    so that the epoch's count divided by its images is that fraction."""

    name = "multilabel"

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x).float()
        target = y.float()
        if smoothing:
            target = target * (1 - smoothing) + smoothing / 2
        loss = F.binary_cross_entropy_with_logits(logits, target)
        right = ((logits.detach() > 0) == (y.detach().float() >= 0.5)).float().mean(1)
        return loss, right.sum()


class MaskedAutoencoder(nn.Module):
    """MAE around a ViT encoder: encode the visible patches only, decode all of them."""

    def __init__(self, encoder: ViT, cfg: PretrainConfig):
        super().__init__()
        c = encoder.config
        if c.stem != "patch":
            raise ValueError(f"MAE needs the plain patch embedding (--model.stem patch), not stem "
                             f"{c.stem!r}: a conv stem sees the masked pixels before they are dropped")
        self.encoder = encoder
        self.ratio = cfg.ratio
        self.norm_pix_loss = cfg.norm_pix_loss
        d = cfg.decoder_size
        self.decoder_embed = nn.Linear(c.hidden_size, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        table = torch.cat([torch.zeros(1, c.num_prefix_tokens, d), sincos_2d(c.grid_size, d)], dim=1)
        self.register_buffer("decoder_pos", table, persistent=False)
        dcfg = dataclasses.replace(c, hidden_size=d, num_heads=cfg.decoder_heads, mlp_size=4 * d,
                                   num_layers=cfg.decoder_layers, dropout=0.0, attention_dropout=0.0,
                                   drop_path=0.0)
        self.decoder_blocks = nn.ModuleList(EncoderBlock(dcfg) for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.decoder_pred = nn.Linear(d, c.patch_size**2 * c.num_channels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def config(self) -> ViTConfig:
        return self.encoder.config

    def encode_visible(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder tokens (B, prefix + n_keep, D) of the visible patches, their indices, the mask."""
        enc, c = self.encoder, self.encoder.config
        tokens = enc.patch_embed(x)  # (B, N, D)
        b, n, _ = tokens.shape
        keep, mask = random_keep(b, n, self.ratio, x.device)
        pos = enc.pos_embed_for(grid_of(x, c))  # any image size: the table for its grid
        if pos is not None:
            tokens = tokens + pos[:, c.num_prefix_tokens:]
        tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        prefix = enc.prefix_tokens(b)  # the class token and registers, with their positions
        if prefix is not None:
            tokens = torch.cat([prefix + (pos[:, :c.num_prefix_tokens] if pos is not None else 0), tokens], 1)
        tokens = enc.pos_drop(tokens)
        for block in enc.blocks:
            tokens, _ = block(tokens)
        return enc.norm(tokens), keep, mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted patches (B, N, P*P*C), mask (B, N), 1 = masked)."""
        c = self.config
        p = c.num_prefix_tokens
        latent, keep, mask = self.encode_visible(x)
        z = self.decoder_embed(latent)
        b, n = mask.shape
        full = self.mask_token.to(z.dtype).expand(b, n, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, z.shape[-1]), z[:, p:])
        grid = grid_of(x, c)
        table = self.decoder_pos if grid == c.grid_size else torch.cat(
            [self.decoder_pos[:, :p], sincos_2d(grid, z.shape[-1]).to(self.decoder_pos)], dim=1)
        z = torch.cat([z[:, :p], full], dim=1) + table.to(z.dtype)
        for block in self.decoder_blocks:
            z, _ = block(z)
        pred = self.decoder_pred(self.decoder_norm(z))[:, p:].float()
        target = patchify(x.float(), c.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum(), pred, mask


    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """For figures: the input with masked patches blanked, and the reconstruction (visible
        patches as they are, masked ones predicted), both (B, C, H, W) in x's normalization.
        With norm_pix_loss the predicted patches are given each true patch's mean and std
        back, as the MAE paper's figures do."""
        c = self.config
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, pred, mask = self(x)
        target = patchify(x.float(), c.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = mask[..., None]
        return (unpatchify(target * (1 - m), c.patch_size, x.shape),
                unpatchify(target * (1 - m) + pred * m, c.patch_size, x.shape))


def unpatchify(patches: torch.Tensor, p: int, shape: torch.Size) -> torch.Tensor:
    """The inverse of patchify: (B, N, P*P*C) -> (B, C, H, W)."""
    b, c, h, w = shape
    x = patches.reshape(b, h // p, w // p, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class MaskedPatchPrediction(nn.Module):
    """The paper's masked patch prediction: corrupt patch embeddings, predict mean colours."""

    def __init__(self, encoder: ViT, cfg: PretrainConfig, mean: list[float], std: list[float]):
        super().__init__()
        c = encoder.config
        self.encoder = encoder
        self.ratio = cfg.ratio
        self.bits = cfg.color_bits
        self.mask_embedding = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        nn.init.normal_(self.mask_embedding, std=0.02)
        self.predict = nn.Linear(c.hidden_size, (2**cfg.color_bits) ** c.num_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def config(self) -> ViTConfig:
        return self.encoder.config

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """Each patch's mean colour, quantized to `bits` per channel, as one class (B, N)."""
        c = self.config
        pixels = (x.float() * self.std + self.mean).clamp(0, 1)
        colour = F.avg_pool2d(pixels, c.patch_size).flatten(2).transpose(1, 2)  # (B, N, C) in [0, 1]
        levels = 2**self.bits
        q = (colour * levels).long().clamp_max(levels - 1)
        weights = levels ** torch.arange(c.num_channels, device=x.device)
        return (q * weights).sum(-1)

    def corrupt(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which patches are corrupted (B, N; 1 = corrupted), and the tokens after it: of those,
        80% become the [mask] embedding, 10% another patch's embedding, 10% stay as they are."""
        b, n, d = tokens.shape
        _, mask = random_keep(b, n, self.ratio, tokens.device)
        r = torch.rand(b, n, device=tokens.device)
        to_mask = (mask > 0) & (r < 0.8)
        to_swap = (mask > 0) & (r >= 0.8) & (r < 0.9)
        other = tokens.gather(1, torch.randint(0, n, (b, n, 1), device=tokens.device).expand(-1, -1, d))
        out = torch.where(to_mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        out = torch.where(to_swap[..., None], other, out)
        return out, mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits over colours (B, N, K), mask (B, N), 1 = corrupted)."""
        enc, c = self.encoder, self.config
        tokens, mask = self.corrupt(enc.patch_embed(x))
        prefix = enc.prefix_tokens(len(x))
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        pos = enc.pos_embed_for(grid_of(x, c))
        if pos is not None:
            tokens = tokens + pos
        tokens = enc.pos_drop(tokens)
        for block in enc.blocks:
            tokens, _ = block(tokens)
        logits = self.predict(enc.norm(tokens)[:, c.num_prefix_tokens:]).float()
        target = self.targets(x)
        picked = mask > 0
        return F.cross_entropy(logits[picked], target[picked]), logits, mask


def grid_of(x: torch.Tensor, c: ViTConfig) -> tuple[int, int]:
    """The patch grid of a batch (images of any size the patch divides)."""
    return x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size


MIN_PRETRAIN_PATCHES = 4  # a 2x2 grid: the least in which masking leaves a task to learn


class SelfSupervised:
    """A self-supervised objective: the wrapper's own loss; the metric counts nothing."""

    def __init__(self, cfg: PretrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.name = cfg.objective

    def wrap(self, model: ViT, spec) -> nn.Module:
        """The encoder inside the objective's module; `spec` (the input normalization) lets
        MPP read the pixels' colours back."""
        c = model.config
        gh, gw = c.grid_size
        if gh * gw < MIN_PRETRAIN_PATCHES:  # nothing left to hide and predict: the loss is 0/0
            h, w = c.image_hw
            raise ValueError(f"pre-training ({self.name}) needs at least {MIN_PRETRAIN_PATCHES} patches, "
                             f"some visible and some masked: {h}x{w} images in patches of {c.patch_size} "
                             f"give a {gh}x{gw} grid (use a larger --data.image_size or a smaller "
                             "--model.patch_size)")
        if self.cfg.objective == "mae":
            return MaskedAutoencoder(model, self.cfg)
        return MaskedPatchPrediction(model, self.cfg, list(spec.mean), list(spec.std))

    def published(self, model: nn.Module) -> ViT:
        return model.encoder

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, _, _ = net(x)
        return loss, torch.zeros((), device=x.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data, spec, batch_size: int, device: torch.device,
                 precision: str) -> PretrainEval:
        """The objective's loss on held-out images, with the same masks every time (seed 0)
        and without touching the training run's random state."""
        runner = as_runner(model, device, precision)
        total, n = 0.0, 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for x, _ in iterate_eval(data, batch_size):
                loss, _, _ = runner(normalize(x.to(device), spec))
                total += loss.item() * len(x)
                n += len(x)
        if n == 0:
            raise ValueError("no images to evaluate")
        return PretrainEval(total / n)


@dataclasses.dataclass
class PretrainEval:
    """Held-out loss of a self-supervised objective (there is no accuracy to report)."""

    loss: float
    top1: None = None
