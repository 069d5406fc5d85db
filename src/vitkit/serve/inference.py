"""The served model: preparing one image, and running a batch of them on the worker thread.

Prediction goes through the same steps as `vitkit predict`: prepare_image with the model's
input spec, the Runner of vitkit.inference.prepare, and the softmax of its logits (a
multi-label model: a sigmoid per tag, and the tags at or over its stored threshold), so the
server returns what the command line would. The rollout for /v1/explain is vitkit.visualize's
capture_attention, attention_rollout and readout, run by the same Runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.preprocess import prepare_image
from ..inference import as_runner, by_size, prepare
from ..multilabel import over_threshold, probabilities, threshold_of
from ..visualize.analysis import attention_rollout, capture_attention, readout
from .images import UploadError


@dataclass
class Prepared:
    """One decoded upload: the model input, and (for explain) the pixels the model sees."""

    tensor: torch.Tensor  # normalized (C, H, W), exactly as prediction prepares it
    size: tuple[int, int]  # the upload's width and height
    mode: str
    format: str | None
    display: np.ndarray | None = None  # (C, H, W) uint8 at the input size, for the overlay


class Engine:
    """An OpenedModel (or anything with .model, .classes, .spec; .name and .source if known)."""

    def __init__(self, opened: Any, precision: str = "auto", compile: bool | str = "auto",
                 engine: str = "auto"):
        self.model: torch.nn.Module = opened.model
        self.classes: list[str] = list(opened.classes)
        self.spec = opened.spec
        self.threshold = threshold_of(getattr(opened, "extra", None))  # None: a single-label model
        self.source = str(getattr(opened, "source", "") or "")
        self.name = str(getattr(opened, "name", "") or type(self.model).__name__)
        params = list(self.model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        self.num_params = sum(p.numel() for p in params)
        # a server's work has no end (images=None), so engine "auto" takes the ONNX route
        # wherever it pays (vitkit.export.route)
        self.runner = prepare(self.model, self.device, precision, engine, images=None, compile=compile,
                              any_size=self.spec.any_size)
        self.precision = self.runner.precision
        self.engine = {"onnx": "onnxruntime"}.get(self.runner.engine, self.runner.engine)
        config = getattr(self.model, "config", None)
        # Attention capture needs vitkit's own forward_features(return_attention=True) (an
        # ONNX model run by onnxruntime has no such thing): on the ONNX route it runs the
        # PyTorch model in fp32, the precision of the route.
        self.can_explain = bool(params) and config is not None and hasattr(self.model, "forward_features")
        self.explainer = self.runner if self.runner.engine == "torch" else as_runner(self.model)
        self.config = config

    def prepare(self, img: Image.Image, explain: bool = False) -> Prepared:
        """A decoded image -> model input (422 for a mode that cannot be converted)."""
        try:
            x = prepare_image(img, self.spec)
        except Exception as e:
            raise UploadError(422, f"cannot convert a {img.mode} image: {e}") from None
        return Prepared(x, img.size, img.mode, img.format, self.pixels(x) if explain else None)

    def pixels(self, x: torch.Tensor) -> np.ndarray:
        """The model input back as (C, H, W) uint8: exactly the pixels the model sees."""
        mean = torch.tensor(self.spec.mean).view(-1, 1, 1)
        std = torch.tensor(self.spec.std).view(-1, 1, 1)
        return (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()

    def run_batch(self, kind: str, items: Sequence[Prepared]) -> list:
        """Probabilities (and for "explain" the rollout maps) of a batch: one forward pass for
        each image size in it."""
        return by_size(lambda idx: self._run_same_size(kind, [items[i] for i in idx]),
                       [it.tensor for it in items])

    def _run_same_size(self, kind: str, items: Sequence[Prepared]) -> list:
        x = torch.stack([it.tensor for it in items]).to(self.device)
        with torch.inference_mode():
            probs = probabilities(self.runner, x, self.threshold is not None).float().cpu()
            if kind == "predict":
                return list(probs)
            attn = capture_attention(self.explainer, x, batch_size=len(x))
        maps = self.rollout(attn, tuple(x.shape[-2:]))
        return list(zip(probs, maps, strict=True))

    def rollout(self, attn: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
        """Attention rollout read out on the patch grid: (B, gh, gw)."""
        c = self.config
        grid = (hw[0] // c.patch_size, hw[1] // c.patch_size)
        return readout(attention_rollout(attn), grid, c.num_prefix_tokens, c.pool)

    def top(self, probs: torch.Tensor, k: int) -> list[dict]:
        """The k most likely classes with their probabilities, most likely first."""
        p, idx = probs.topk(min(k, len(self.classes)))
        return [{"class": self.classes[i], "index": i, "probability": round(q, 6)}
                for q, i in zip(p.tolist(), idx.tolist(), strict=True)]

    def labels(self, probs: torch.Tensor) -> list[dict]:
        """A multi-label model's tags at or over its threshold, most probable first."""
        return over_threshold(probs, self.classes, self.threshold)

    def describe(self) -> dict:
        """What /v1/model returns about the model itself."""
        c = self.config
        return {
            "name": self.name,
            "source": self.source,
            "kind": "vitkit" if self.can_explain else type(self.model).__name__,
            "architecture": c.to_dict() if hasattr(c, "to_dict") else None,
            "parameters": self.num_params,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "input": self.spec.to_dict(),
            "precision": self.precision,
            "engine": self.engine,
            "device": str(self.device),
            "explain": self.can_explain,
            "multilabel": None if self.threshold is None else {"threshold": self.threshold},
        }
