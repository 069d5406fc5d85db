"""Named input preprocessing, for checkpoints that do not record how their images were prepared.

A bare weights file (a timm or torchvision state dict, a .safetensors file) stores no mean, std
or crop, yet a model classifies well only on inputs prepared as in its training. A preset names
a known recipe (`--load.preprocess deit`), or any timm model name whose pretrained config timm
holds in its own code (no download: timm's registry is read, never the network). Each preset
fills mean, std, crop_pct and interpolation; the model's own input size is never changed.

Precedence, strongest first: --load.mean / --load.std, --load.preprocess, what the model's files
stored, vitkit's default (mean = std = 0.5, the whole image resized).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.preprocess import InputSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # inputs in [-1, 1]: the paper's models, Inception, timm's augreg ViTs
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The values of timm's pretrained configs (timm 1.0), checked against timm in tests/test_presets.py.
PRESETS: dict[str, dict] = {
    # timm's default for ImageNet-1k models (convit, convnext, ...): resize to 256, crop 224
    "imagenet": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"),
    # deit_*_224.fb_in1k: resize to 248, crop 224
    "deit": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.9, interpolation="bicubic"),
    # vit_*_224.augreg_in21k_ft_in1k, the paper's released ViTs
    "inception": dict(mean=HALF, std=HALF, crop_pct=0.9, interpolation="bicubic"),
    # vit_*_clip_224.openai (OpenAI's own pipeline crops the shorter side whole: timm crops 0.9)
    "clip": dict(mean=CLIP_MEAN, std=CLIP_STD, crop_pct=0.9, interpolation="bicubic"),
}
DEFAULT_NAMES = ("none", "vitkit")  # vitkit's defaults: mean = std = 0.5, crop_pct 1.0, bicubic
NAMES = (*PRESETS, *DEFAULT_NAMES)
DEFAULT_NOTE = "default: mean = std = 0.5 assumed"

# Where each format keeps what it stored (LoadReport.format -> words for the source).
_STORED_IN = {"vitkit": "stored in config.json", "timm": "stored in config.json (timm's pretrained_cfg)",
              "hf": "stored in preprocessor_config.json", "onnx": "stored in the ONNX file",
              "npz": "the .npz release's convention", "torchvision": "torchvision's ImageNet convention"}


@dataclass
class Preset:
    """A named recipe's values (3 channels, or any count for vitkit's defaults)."""

    name: str
    values: dict  # mean, std, crop_pct, interpolation; mean/std None: 0.5 per channel
    origin: str = "preset"  # "preset", or "timm" for a timm pretrained config
    notes: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # the input size timm's config is for

    @property
    def source(self) -> str:
        return f"preset {self.name}" + (" (timm's pretrained config)" if self.origin == "timm" else "")

    def for_channels(self, channels: int) -> dict:
        """The values for a model with `channels` input channels; ValueError when they cannot fit."""
        v = dict(self.values)
        if v["mean"] is None:
            v["mean"], v["std"] = [0.5] * channels, [0.5] * channels
        if len(v["mean"]) != channels:
            raise ValueError(f"--load.preprocess {self.name}: its mean/std have {len(v['mean'])} values; "
                             f"the model takes {channels} channel(s) (pass --load.mean / --load.std)")
        return {**v, "mean": [float(x) for x in v["mean"]], "std": [float(x) for x in v["std"]]}


def get_preset(name: str) -> Preset:
    """A preset by name, else a timm model name's pretrained config (timm imported only then);
    a one-line ValueError naming the presets when neither is known."""
    key = name.strip().lower()
    if key in PRESETS:
        return Preset(key, dict(PRESETS[key]))
    if key in DEFAULT_NAMES:
        return Preset(key, dict(mean=None, std=None, crop_pct=1.0, interpolation="bicubic"))
    found, why = _from_timm(name.strip())
    if found is None:
        raise ValueError(f"--load.preprocess {name}: not a preset ({', '.join(NAMES)}) nor {why}")
    return found


def _from_timm(name: str) -> tuple[Preset | None, str]:
    """timm's pretrained config for a model name ("deit_tiny_patch16_224" or with its tag,
    ".fb_in1k"), read from timm's registry; (None, why) when timm is absent or has no such name."""
    want = "a timm model name with a pretrained config"
    try:
        import timm.data
        import timm.models
    except ImportError:
        return None, f"{want} (timm is not installed: pip install timm)"
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # a malformed name or tag
        cfg = None
    if cfg is None:
        return None, want
    d = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    interpolation = d.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"--load.preprocess {name}: timm's config resizes with {interpolation!r}; "
                         "vitkit resizes bicubic or bilinear")
    crop_pct, mode = float(d.get("crop_pct", 1.0)), d.get("crop_mode", "center")
    notes = []
    if (mode == "center" and crop_pct >= 1.0) or (mode != "center" and crop_pct < 1.0) or mode == "border":
        notes.append(f"timm prepares {name} with crop_mode {mode} at crop_pct {crop_pct:g}; vitkit resizes "
                     "the whole image at crop_pct 1, else centre-crops the shorter side: non-square images "
                     "differ")
    values = dict(mean=tuple(d["mean"]), std=tuple(d["std"]), crop_pct=crop_pct, interpolation=interpolation)
    return Preset(name, values, "timm", notes, tuple(d["input_size"][1:])), want


def stored_source(fmt: str) -> str:
    """Words for where a format's stored input spec came from."""
    return _STORED_IN.get(fmt, f"stored with the {fmt} checkpoint")


def input_spec(image_hw: tuple[int, int], channels: int, stored: dict, fmt: str, preset: Preset | None = None,
               mean: list[float] | None = None, std: list[float] | None = None
               ) -> tuple[InputSpec, str, list[str]]:
    """The spec to feed a model, where it came from, and notes on defaults and overrides.

    --load.mean / --load.std win, then the preset, then what the files stored (`stored`, read
    from format `fmt`), then vitkit's default."""
    stored = {k: v for k, v in stored.items() if v is not None and k != "image_size"}
    notes: list[str] = []
    replaced: dict = {}
    from_files = "mean" in stored and "std" in stored
    base = stored_source(fmt) if from_files else DEFAULT_NOTE
    values = dict(stored)
    if preset is not None:
        chosen = preset.for_channels(int(stored.get("channels", channels)))
        replaced = {k: stored[k] for k, v in chosen.items() if k in stored and stored[k] != v}
        if replaced:
            notes.append(f"{preset.source} replaces the input spec {stored_source(fmt)} ("
                         + ", ".join(f"{k} {v}" for k, v in replaced.items()) + ")")
        values.update(chosen)
        base = preset.source
        notes += preset.notes
        if preset.image_size and tuple(preset.image_size) != tuple(image_hw):
            h, w = preset.image_size
            notes.append(f"{preset.source} is for {h}x{w} inputs; the model's own size is kept")
    spec, default_notes = InputSpec.for_model(image_hw, channels, values, mean=mean, std=std)
    if default_notes:
        notes.append("normalization not recorded: mean = std = 0.5 assumed (pass --load.preprocess NAME, "
                     "e.g. imagenet or deit, or --load.mean / --load.std if the model was trained otherwise)")
    if mean is not None and std is not None:
        rest = f"; crop and interpolation: {base}" if base != DEFAULT_NOTE else ""
        source = "--load.mean/--load.std" + rest
    elif mean is not None or std is not None:
        source = f"--load.{'mean' if mean is not None else 'std'}; the rest: {base}"
    else:
        source = base
    if preset is not None:
        notes.append(f"input spec: {source}: mean {spec.mean}, std {spec.std}, crop_pct {spec.crop_pct:g}, "
                     f"{spec.interpolation}")
    return spec, source, notes
