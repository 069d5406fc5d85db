"""Augmentation on whole batches, switchable from the config.

In-memory data sets are augmented a batch at a time: crops and flips are vectorized
gathers, RandAugment runs per image (or per small group of images) and MixUp/CutMix
come from torchvision.transforms.v2. Progressive resizing (FixRes, Touvron et al. 2019;
fast.ai's DAWNBench ImageNet runs) feeds smaller, cheaper images early in a run and the full size at
the end, so the model ends on the resolution it is evaluated at (docs/training.md has what it
bought on CIFAR-10). Randomness comes from the global torch RNG,
whose state every checkpoint saves, so a resumed run augments exactly as an unbroken one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..notices import check_ranges, is_number


@dataclass
class AugmentConfig:
    """Which augmentations run; each is off when its value is 0 / False / "none"."""

    # pad-and-crop, or random resized crop; "auto": resized for photos, else pad (vitkit.plan)
    crop: Literal["auto", "none", "pad", "resized"] = "auto"
    pad: int | None = None  # pixels of padding for crop="pad"; unset: default_pad of the image size
    scale_min: float = 0.35  # smallest area fraction for crop="resized"
    flip: bool | None = None  # horizontal flip; unset: on for photos, off for digits and small images
    randaugment: int = 0  # RandAugment operations per image (0: off)
    randaugment_magnitude: int = 9
    # images that share one draw of RandAugment operations: 1 is the paper's per-image rule;
    # on a GPU, per-image calls are bound by kernel launches, and groups of 16 run ~10x faster
    randaugment_group: int = 1
    erasing: float = 0.0  # probability of random erasing per image
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    label_smoothing: float = 0.0
    # progressive resizing: the fraction of training (0: off) over which the input side grows
    # from progressive_scale of its size to the full size, in whole patches (progressive_side)
    progressive: float = 0.0
    progressive_scale: float = 0.75

    def validate(self) -> None:
        """Refuse augmentation settings outside their range, naming the option."""
        def count(name: str, low: int, optional: bool = False) -> tuple:
            v = getattr(self, name)
            ok = (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)
            return name, v, ok, f"{low} or more"

        def real(name: str, ok, rule: str) -> tuple:
            v = getattr(self, name)
            return name, v, is_number(v) and ok(v), rule

        m = self.randaugment_magnitude
        check_ranges("augment", [
            count("pad", 0, optional=True), count("randaugment", 0), count("randaugment_group", 1),
            ("randaugment_magnitude", m, isinstance(m, int) and 0 <= m <= 30, "0 to 30"),
            real("scale_min", lambda v: 0 < v <= 1, "in (0, 1]"),
            real("erasing", lambda v: 0 <= v <= 1, "in [0, 1] (a probability)"),
            real("mixup", lambda v: v >= 0, ">= 0 (0: off)"),
            real("cutmix", lambda v: v >= 0, ">= 0 (0: off)"),
            real("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
            real("progressive", lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of training)"),
            real("progressive_scale", lambda v: 0 < v <= 1, "in (0, 1]"),
        ])


def progressive_side(side: int, progress: float, until: float, scale: float, stride: int = 1) -> int:
    """The side an image of `side` pixels is fed at `progress` (0 to 1) of a run that grows its
    inputs: `scale` of it at the start, growing linearly to the whole side at `until`, rounded
    down to whole multiples of `stride` (the model's patch, so every size cuts into patches);
    the whole side from `until` on, and always when `until` is 0."""
    if until <= 0 or progress >= until:
        return side
    grown = scale + (1.0 - scale) * max(progress, 0.0) / until
    return min(side, max(stride, int(grown * side) // stride * stride))


def default_pad(size: tuple[int, int]) -> int:
    """Padding for a pad-and-crop when none is given: an eighth of the shorter side, at least 1
    (4 px at 32x32, the usual CIFAR shift; 3 at 28x28; 1 at 8x8)."""
    return max(1, min(size) // 8)


def random_crop_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by `pad` pixels and cut a random window of the original size from each image."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # b, h, 1
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # b, 1, w
    bi = torch.arange(b, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2)


def random_resized_crop(x: torch.Tensor, scale_min: float, ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-image random resized crop of a float batch through one affine grid_sample, out at
    `size` (default: the batch's): crops of a larger cached copy keep their resolution."""
    b = x.shape[0]
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(scale_min, 1.0)
    logr = torch.empty(b, device=dev).uniform_(*torch.tensor(ratio).log().tolist())
    r = logr.exp()
    sw = (area * r).sqrt().clamp(max=1.0)
    sh = (area / r).sqrt().clamp(max=1.0)
    tx = (torch.rand(b, device=dev) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, device=dev) * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
    out = list(x.shape[:2]) + list(size or x.shape[-2:])
    grid = F.affine_grid(theta, out, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erasing(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 0.25)) -> torch.Tensor:
    """Replace one random rectangle per chosen image with noise (Zhong et al., 2020)."""
    b, _, h, w = x.shape
    dev = x.device
    hit = torch.rand(b, device=dev) < p
    a = torch.empty(b, device=dev).uniform_(*area) * h * w
    r = torch.empty(b, device=dev).uniform_(0.3, 3.3)
    eh = (a * r).sqrt().clamp(1, h).long()
    ew = (a / r).sqrt().clamp(1, w).long()
    y0 = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    x0 = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]) & hit[:, None, None])
    return torch.where(box[:, None], torch.randn_like(x), x)


class BatchAugment:
    """uint8 batch in, normalized float batch (and possibly soft targets) out."""

    def __init__(self, cfg: AugmentConfig, num_classes: int, mean: list[float], std: list[float],
                 size: tuple[int, int] | None = None, stride: int = 1):
        self.cfg, self.size = cfg, None if size is None else (int(size[0]), int(size[1]))
        self.stride = stride  # the model's patch: progressive sizes are multiples of it
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.randaugment = (v2.RandAugment(cfg.randaugment, cfg.randaugment_magnitude)
                            if cfg.randaugment else None)
        mixers = []
        if cfg.mixup > 0:
            mixers.append(v2.MixUp(alpha=cfg.mixup, num_classes=num_classes))
        if cfg.cutmix > 0:
            mixers.append(v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean.to(x.device)) / self.std.to(x.device)

    def size_at(self, shape: tuple[int, int], progress: float | None) -> tuple[int, int]:
        """The size a batch of `shape` (h, w) leaves at `progress` of the run (None: the full one)."""
        h, w = self.size or shape
        cfg = self.cfg
        if progress is None or not cfg.progressive:
            return h, w
        return tuple(progressive_side(s, progress, cfg.progressive, cfg.progressive_scale, self.stride)
                     for s in (h, w))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, progress: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a uint8 batch; `progress` (0 to 1, the run's) sets the size under progressive
        resizing, and without it the batch leaves at the full size."""
        cfg = self.cfg
        if self.randaugment is not None:
            x = torch.cat([self.randaugment(g) for g in x.split(max(cfg.randaugment_group, 1))])
        pad = default_pad(tuple(x.shape[-2:])) if cfg.pad is None else cfg.pad
        if cfg.crop == "pad" and pad > 0:
            x = random_crop_pad(x, pad)
        x = self.normalize(x)
        size = self.size_at(tuple(x.shape[-2:]), progress)
        if cfg.crop == "resized":
            x = random_resized_crop(x, cfg.scale_min, size=size)
        elif tuple(x.shape[-2:]) != size:  # a larger cached copy, or a smaller progressive size
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if cfg.flip:
            x = random_flip(x)
        if cfg.erasing > 0:
            x = random_erasing(x, cfg.erasing)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y
