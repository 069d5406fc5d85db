"""From a model (and optionally images and a training run) to every figure and report.html.

This is what `vitkit visualize` runs; `make_figures` takes an already loaded model so a
notebook or the trainer can call it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.preprocess import InputSpec, normalize, open_image, spec_uint8
from ..loading import LoadOptions, open_model
from ..model import ViT
from . import analysis as A
from . import figures as fig
from .report import Section, write_report

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_GRID_PANELS = 144  # layers x heads above this: one attention figure per layer


@dataclass
class Inputs:
    """Images to look at: as the model sees them, as uint8 for display, and where they came from."""

    raw: torch.Tensor | list[torch.Tensor]  # (B, C, H, W) uint8 at the model's input size; a list
    # of (C, H, W) when images are read at sizes of their own (resize "keep")
    names: list[str]
    description: str
    noise: bool = False

    def normalized(self, spec: InputSpec) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(self.raw, list):
            return [normalize(r, spec) for r in self.raw]
        return normalize(self.raw, spec)


@dataclass
class Result:
    """What make_figures wrote: report path, figure files with their pixel sizes, skipped figures."""

    report: Path
    figures: dict[Path, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What `vitkit visualize` prints: every file written, and why a figure was skipped."""
        return ([f"wrote {p}" for p in self.figures] + [f"skipped {t}: {r}" for t, r in self.skipped.items()]
                + [f"wrote {self.report}"])


def _stacked(raw: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One tensor of same-sized images; the list itself when their sizes differ."""
    return torch.stack(raw) if len({tuple(r.shape) for r in raw}) == 1 else raw


def load_images(paths: list[str | Path], spec: InputSpec) -> Inputs:
    """Image files, converted and resized exactly as for prediction (a model that reads images
    at sizes of their own sees, and is drawn on, each photo at its aspect ratio)."""
    raw = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such image file")
        try:
            with open_image(p) as img:
                raw.append(spec_uint8(img, spec))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{p}: cannot read as an image ({e})") from None
    names = [Path(p).name for p in paths]
    return Inputs(_stacked(raw), names, f"{len(raw)} image(s) given: {', '.join(names)}")


def _from_uint8(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(N, C, H, W) uint8 in any channel count and size -> the model's."""
    if images.shape[1] == spec.channels and tuple(images.shape[-2:]) == tuple(spec.image_size):
        return images
    out = []
    for im in images:
        arr = im.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        out.append(spec_uint8(pil, spec))
    return torch.stack(out)


def sample_data(data: str | Path, spec: InputSpec, n: int, seed: int = 0) -> Inputs:
    """n images drawn with a fixed seed from an image folder (searched recursively), or
    from the built-in digits set's test split when data is "digits"."""
    rng = np.random.default_rng(seed)
    if str(data) == "digits":
        try:
            from ..data.arrays import load_digits
        except ImportError:
            raise ValueError("the built-in digits set is not available in this installation") from None
        _, test = load_digits()
        idx = np.sort(rng.choice(len(test), size=min(n, len(test)), replace=False))
        raw = _from_uint8(test.images[torch.from_numpy(idx)], spec)
        names = [f"digit {test.classes[int(test.labels[i])]} (test #{i})" for i in idx]
        return Inputs(raw, names, f"{len(idx)} images sampled from the built-in digits test split")
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{root}: no image files found")
    pick = [files[i] for i in np.sort(rng.choice(len(files), size=min(n, len(files)), replace=False))]
    inputs = load_images(pick, spec)
    inputs.names = [p.relative_to(root).as_posix() for p in pick]
    inputs.description = f"{len(pick)} of {len(files)} images sampled from {root}"
    return inputs


def noise_images(spec: InputSpec, n: int, seed: int = 0) -> Inputs:
    """Uniform random pixels: something to run attention on when no images are at hand."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, spec.channels, *spec.image_size), generator=g, dtype=torch.uint8)
    return Inputs(raw, [f"noise {i + 1}" for i in range(n)],
                  f"{n} random-noise images (no images and no --data given)", noise=True)


# ---- the figures --------------------------------------------------------------------------

NOISE_NOTE = ("Inputs are random-noise images because no images and no --data folder were given: "
              "these maps show how the model responds to noise, not to real data.")


@dataclass
class Page:
    """What the figures of one report share while make_figures draws them, and what they add up
    to: the report's sections and the Result."""

    model: ViT
    spec: InputSpec
    inputs: Inputs
    out_dir: Path
    run_dir: Path | None
    attn: list[list[np.ndarray]]  # per input: every layer's attention (1, heads, T, T)
    shown: list[int]  # the inputs that get figures of their own
    result: Result
    sections: list[Section] = field(default_factory=list)

    @property
    def cfg(self):
        return self.model.config

    @property
    def raw(self) -> np.ndarray | list[np.ndarray]:
        raw = self.inputs.raw
        return [r.numpy() for r in raw] if isinstance(raw, list) else raw.numpy()

    def grid(self, b: int) -> tuple[int, int]:
        """The patch grid input b was read at."""
        h, w = self.raw[b].shape[-2:]
        return h // self.cfg.patch_size, w // self.cfg.patch_size

    @property
    def one_size(self) -> bool:
        return not isinstance(self.inputs.raw, list)

    @property
    def noise(self) -> str:
        return " (random-noise inputs)" if self.inputs.noise else ""

    @property
    def token(self) -> str:
        return "class token" if self.cfg.pool == "cls" else "mean token"

    def add(self, section: Section, files: list[tuple[Path, tuple[int, int]]]) -> None:
        for path, size in files:
            self.result.figures[path] = size
            section.images.append(path)
        self.sections.append(section)

    def skip(self, title: str, reason: str) -> None:
        self.result.skipped[title] = reason
        self.sections.append(Section(title, note=reason))


def attention_figures(p: Page) -> None:
    """1. The attention of the pooled token, per layer and head, for each image shown."""
    cfg, raw = p.cfg, p.raw
    layers, heads = cfg.num_layers, cfg.num_heads
    heads_labels = [f"head {h + 1}" for h in range(heads)]
    files = []
    for b in p.shown:
        per_token = A.class_token_attention(p.attn[b], p.grid(b), cfg.num_prefix_tokens,
                                            cfg.pool)[:, 0]  # (L, H, gh, gw)
        title = f"Attention of the {p.token} to each patch: {p.inputs.names[b]}{p.noise}"
        if layers * heads <= MAX_GRID_PANELS:
            files.append(fig.plot_attention_grid(
                raw[b], per_token, p.out_dir / f"attention_{b + 1}.png", title,
                [f"layer {i + 1}" for i in range(layers)], heads_labels))
        else:
            for i in range(layers):
                files.append(fig.plot_attention_grid(
                    raw[b], per_token[i:i + 1], p.out_dir / f"attention_{b + 1}_layer{i + 1:02d}.png",
                    f"{title}, layer {i + 1}", [f"layer {i + 1}"], heads_labels))
    what = ("the class token's attention row" if cfg.pool == "cls" else
            "the mean over the patch tokens' attention rows (this model pools by averaging the patch tokens)")
    p.add(Section(f"Attention of the {p.token}, per layer and head",
                  f"For each layer (rows) and head (columns): {what}, over the patches, upsampled to the "
                  "image and overlaid on it. Each panel is scaled to its own maximum.",
                  note=NOISE_NOTE if p.inputs.noise else None), files)


def rollout_figure(p: Page) -> None:
    """2. Attention rollout (paper Figure 6)."""
    cfg, raw = p.cfg, p.raw
    rollout = [A.readout(A.attention_rollout(p.attn[b]), p.grid(b), cfg.num_prefix_tokens, cfg.pool)[0]
               for b in p.shown]
    p.add(Section("Attention rollout (paper Figure 6)",
                  "Attention rollout (Abnar and Zuidema, 2020): per layer the heads are averaged, the "
                  "identity is added for the residual connection and the rows renormalized; the layers "
                  f"are multiplied through. Shown: what the {p.token} draws from each input patch, overlaid "
                  "on the image, and the image masked by it."),
          [fig.plot_rollout([raw[b] for b in p.shown], rollout, p.out_dir / "rollout.png",
                            f"Attention rollout{p.noise}", [p.inputs.names[b] for b in p.shown])])


def distance_figure(p: Page) -> None:
    """3. Mean attention distance (paper Figure 7, right)."""
    cfg, spec = p.cfg, p.spec
    every = range(len(p.attn))  # each input on its own grid, then the mean over inputs
    dist = np.mean([A.mean_attention_distance(p.attn[b], p.grid(b), cfg.patch_size, cfg.num_prefix_tokens)
                    for b in every], axis=0)
    uniform = float(np.mean([A.uniform_attention_distance(p.grid(b), cfg.patch_size) for b in every]))
    size = (f"Image {spec.image_size[0]}x{spec.image_size[1]}" if p.one_size else
            f"Images at their own aspect ratio, at most {cfg.num_patches} patches")
    p.add(Section("Mean attention distance (paper Figure 7, right)",
                  f"For each head (dots) and layer: the distance in pixels between a query patch and the "
                  f"patches it attends to, weighted by attention, averaged over query patches and "
                  f"{p.inputs.description}. {size}, patch "
                  f"{cfg.patch_size}; the dashed line is uniform attention over all patches "
                  f"({uniform:.1f} px).", note=NOISE_NOTE if p.inputs.noise else None),
          [fig.plot_attention_distance(dist, p.out_dir / "attention_distance.png",
                                       f"Mean attention distance, {len(p.inputs.raw)} images{p.noise}",
                                       uniform)])


def position_figure(p: Page) -> None:
    """4. Position-embedding similarity (paper Figure 7, centre)."""
    title, cfg = "Position embedding similarity (paper Figure 7, centre)", p.cfg
    if p.model.pos_embed is None:
        return p.skip(title, "this model has no position embeddings")
    sim = A.position_embedding_similarity(p.model.pos_embed, cfg.grid_size, cfg.num_prefix_tokens)
    kind = "learned" if cfg.pos_embed == "learn" else "fixed 2D sin-cos (not learned)"
    p.add(Section(title, f"Cosine similarity of the {kind} position embedding of each patch (tile at "
                         "its row and column) with those of all patches."),
          [fig.plot_position_similarity(sim, p.out_dir / "position_similarity.png",
                                        "Position embedding similarity")])


def patch_filters_figure(p: Page) -> None:
    """5. Principal components of the patch-embedding filters (paper Figure 7, left)."""
    title, cfg = "Patch-embedding filters (paper Figure 7, left)", p.cfg
    if cfg.stem == "conv":
        return p.skip(title, "this hybrid model's patch filters act on CNN features, not on pixels, "
                             "so they have no image-like picture")
    comps, ratio = A.patch_embedding_pcs(p.model.patch_embed.proj.weight, 28)
    p.add(Section(title, f"The leading {len(comps)} principal components of the {cfg.hidden_size} "
                         f"patch-embedding filters ({cfg.num_channels}x{cfg.patch_size}x{cfg.patch_size} "
                         "each), each scaled to its own range, with the share of variance it explains."),
          [fig.plot_patch_pcs(comps, ratio, p.out_dir / "patch_embedding_pcs.png",
                              f"Patch-embedding filters: top {len(comps)} principal components "
                              f"({100 * ratio.sum():.0f}% of variance)")])


def curves_figure(p: Page) -> None:
    """6. The training curves of a run directory."""
    title = "Training curves"
    metrics = p.run_dir / "metrics.csv" if p.run_dir is not None else None
    if metrics is None or not metrics.is_file():
        where = f"in {p.run_dir}" if p.run_dir is not None else "(not a training run directory)"
        return p.skip(title, f"no metrics.csv {where}")
    path = fig.plot_curves(metrics, p.out_dir / "curves.png")
    p.add(Section(title, "Loss, accuracy and learning rate per epoch from metrics.csv."),
          [(path, fig.curves_size())])


def reconstruction_figure(p: Page) -> None:
    """7. A masked autoencoder's reconstructions (MAE pre-training runs only; nothing otherwise)."""
    if p.run_dir is None:
        return
    x = p.inputs.normalized(p.spec)
    parts = [mae_reconstruction(p.run_dir, p.model, x[b][None] if not p.one_size else x[b:b + 1], p.spec)
             for b in p.shown]
    if parts[0] is None:
        return
    masked, recon = [m[0] for m, _ in parts], [r[0] for _, r in parts]
    p.add(Section("Masked autoencoder reconstruction",
                  "MAE pre-training: each input, the patches the encoder saw (the masked ones blanked) "
                  "and the decoder's reconstruction of the masked patches beside the visible ones. "
                  "The predicted patches are given each true patch's mean and spread back, as in the "
                  "MAE paper's figures."),
          [fig.plot_reconstruction([p.raw[b] for b in p.shown], masked, recon,
                                   p.out_dir / "reconstruction.png", f"MAE reconstruction{p.noise}",
                                   [p.inputs.names[b] for b in p.shown])])


FIGURES = (attention_figures, rollout_figure, distance_figure, position_figure, patch_filters_figure,
           curves_figure, reconstruction_figure)


def report_summary(p: Page, source: str, classes: list[str] | None) -> dict:
    """The table at the top of report.html: the model, its inputs and its classes."""
    cfg, spec, grid = p.cfg, p.spec, p.cfg.grid_size
    summary = {
        "model": source or "(in memory)",
        "architecture": (f"{cfg.num_layers} layers, D={cfg.hidden_size}, {cfg.num_heads} heads, "
                         f"MLP {cfg.mlp_size}, patch {cfg.patch_size}, grid {grid[0]}x{grid[1]}"),
        "input": f"{spec.image_size[0]}x{spec.image_size[1]}, {spec.channels} channel(s)",
        "pooling": "class token" if cfg.pool == "cls" else "mean of the patch tokens",
        "position embeddings": cfg.pos_embed,
        "parameters": f"{p.model.num_params():,}",
        "inputs": p.inputs.description,
    }
    if classes:
        summary["classes"] = f"{len(classes)}: " + ", ".join(map(str, classes[:12])) + (
            " ..." if len(classes) > 12 else "")
    return summary


def make_figures(model: ViT, spec: InputSpec, out_dir: str | Path, inputs: Inputs,
                 run_dir: str | Path | None = None, max_images: int = 4,
                 device: str | torch.device = "cpu", source: str = "", classes: list[str] | None = None
                 ) -> Result:
    """Write every figure for model on inputs (prepared with spec) into out_dir, then report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    x = inputs.normalized(spec)
    if isinstance(x, list):  # images of sizes of their own: one at a time
        attn = [A.capture_attention(model, t[None].to(device)) for t in x]
    else:
        every = A.capture_attention(model, x.to(device))
        attn = [[a[b:b + 1] for a in every] for b in range(len(x))]
    page = Page(model, spec, inputs, out_dir, Path(run_dir) if run_dir else None, attn,
                list(range(min(max_images, len(inputs.raw)))), Result(report=out_dir / "report.html"))
    for draw in FIGURES:
        draw(page)
    write_report(out_dir, f"Looking inside {Path(source).name or 'a ViT'}", page.sections,
                 report_summary(page, source, classes), [NOISE_NOTE] if inputs.noise else None)
    return page.result


def mae_reconstruction(run_dir: str | Path, model: ViT, x: torch.Tensor, spec: InputSpec
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """(masked inputs, reconstructions) as uint8 (B, C, H, W) for an MAE pre-training run
    directory (its decoder is in state.pt); None for any other run or folder."""
    import copy
    import json

    from ..checkpoint import CONFIG_NAME, STATE_NAME, load_state_dict_checked
    from ..training.objectives import MaskedAutoencoder, PretrainConfig

    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    objective = meta.get("pretrain") if isinstance(meta, dict) else None
    if not objective or objective.get("objective") != "mae" or not (run_dir / STATE_NAME).is_file():
        return None
    cpu = copy.deepcopy(model).float().cpu()
    mae = MaskedAutoencoder(cpu, PretrainConfig(**objective))
    state = torch.load(run_dir / STATE_NAME, map_location="cpu", weights_only=True)["model"]
    load_state_dict_checked(mae, state, str(run_dir / STATE_NAME))
    mae.eval()
    masked, recon = mae.reconstruct(x.float().cpu())
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        return (t * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    return to_uint8(masked), to_uint8(recon)


def visualize_path(path: str | Path, out: str | Path, images: list[str] | None = None,
                   data: str | None = None, num_samples: int = 16, max_images: int = 4, seed: int = 0,
                   device: str = "cpu", options: LoadOptions | None = None) -> Result:
    """Open a model (anything vitkit.open_model reads) and write its figures and report to out."""
    if max_images < 1 or num_samples < 1:
        raise ValueError("max_images and num_samples must be at least 1")
    opened = open_model(path, options)
    spec = opened.spec
    if images:
        inputs = load_images(images, spec)
    elif data:
        inputs = sample_data(data, spec, num_samples, seed)
    else:
        inputs = noise_images(spec, num_samples, seed)
    run_dir = Path(path) if Path(path).is_dir() else None
    return make_figures(opened.model, spec, out, inputs, run_dir, max_images, device, source=str(path),
                        classes=opened.classes)
