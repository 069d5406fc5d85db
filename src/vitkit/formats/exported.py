"""Files that `vitkit export` wrote, read back: the vitkit metadata inside them (ONNX and
.pt2 alike), and an ONNX export run by onnxruntime behind vitkit's model interface.

`open_onnx(path)` reads the vitkit metadata from the file itself and returns the model as
a parameter-free torch module, so code written for vitkit's ViT (eval, forward on the
normalized batch, predict_proba, config) runs the file unchanged. A features export (no
classifier head) is refused there, so predict, evaluate and serve cannot mistake its
features for logits; `open_onnx(path, features=True)` opens it, as an OnnxFeatures. Reading
lives here, with the other formats and below vitkit.loading (which opens .onnx files through
it); writing is vitkit.export's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ViTConfig, patch_problem
from ..data.preprocess import InputSpec
from ..multilabel import KEY as MULTILABEL_KEY
from ..notices import first_line
from ..opened import OpenedModel

METADATA_KEY = "vitkit"  # ONNX metadata_props key, and the pt2 extra file's stem


def is_features_export(meta: dict) -> bool:
    """Whether vitkit metadata describes a features export (vitkit.export.features: no head)."""
    return meta.get("features") is not None


def parse(text: str, where: str) -> tuple[dict, ViTConfig, InputSpec]:
    """The stored metadata back as (dict, ViTConfig, InputSpec); ValueError naming `where`."""
    try:
        meta = json.loads(text)
        if meta.get("format") != "vitkit":
            raise ValueError("not vitkit metadata")
        return meta, ViTConfig.from_dict(meta["model"]), InputSpec.from_dict(meta["input"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: unreadable vitkit metadata ({e})") from None


class OnnxViT(nn.Module):
    """An onnxruntime session (CPUExecutionProvider) as a torch module without parameters."""

    engine = "onnx"  # what vitkit.inference's Runner reports

    def __init__(self, session, config: ViTConfig, meta: dict, path: Path):
        super().__init__()
        self.session = session
        self.config = config
        self.meta = meta
        self.path = path
        self.input_name = self._input_name()
        self.int8 = bool(meta.get("int8"))
        self.precision = "int8" if self.int8 else "fp32"  # what the runtime computes in

    def _input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits (B, classes) for a normalized float batch (B, C, H, W)."""
        return self._run(x)[0]

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the graph for a normalized float batch, after checking its shape."""
        c = self.config.num_channels
        if self.meta.get("dynamic_size"):
            p = int(self.meta.get("patch_size", self.config.patch_size))
            if x.ndim != 4 or x.shape[1] != c:
                raise ValueError(f"{self.path.name} takes (B, {c}, H, W) inputs, got {tuple(x.shape)}")
            problem = patch_problem(tuple(x.shape[-2:]), p)
            if problem:  # the eager model's message, before onnxruntime's own
                raise ValueError(f"{self.path.name}: {problem}")
        else:
            h, w = self.config.image_hw
            if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
                raise ValueError(f"{self.path.name} takes (B, {c}, {h}, {w}) inputs "
                                 f"(the image size is fixed at export), got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return [torch.from_numpy(o).to(x.device) for o in self._infer(arr)]

    def _infer(self, arr: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for one input array (the runtime's call)."""
        return self.session.run(None, {self.input_name: arr})

    def __deepcopy__(self, memo: dict) -> OnnxViT:
        """A copy with its own session (onnxruntime sessions cannot be copied)."""
        threads = self.session.get_session_options().intra_op_num_threads or None
        copied = type(self)(session(self.path, threads), self.config, dict(self.meta), self.path)
        return copied.train(self.training)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the logits; a sigmoid per tag when the metadata
        marks a multi-label model."""
        logits = self(x).float()
        return logits.sigmoid() if self.meta.get(MULTILABEL_KEY) else logits.softmax(dim=-1)

    def extra_repr(self) -> str:
        c = self.config
        kind = "int8" if self.int8 else "fp32"
        size = f"{c.image_hw}, dynamic size" if self.meta.get("dynamic_size") else f"{c.image_hw}"
        return f"{self.path.name}, onnxruntime {kind}, D={c.hidden_size} L={c.num_layers}, {size}"


class OnnxFeatures(OnnxViT):
    """A features export run by onnxruntime: forward gives (features (B, D), tokens (B, D, h, w))."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, tokens = self._run(x)
        return features, tokens

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(refusal(self.path))

    def extra_repr(self) -> str:
        f = self.meta["features"]
        return f"{super().extra_repr()}, features: {f['token']} token of block {f['layer']}"


def refusal(path: Path) -> str:
    """The one line that turns a features export away from what needs a classifier."""
    return (f"{path}: a features export (no classifier head); use it for embeddings "
            "(vitkit.formats.exported.open_onnx(path, features=True)), or export without --features")


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; `threads` sets intra-op threads (default: onnxruntime's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _report(path: Path, meta: dict, config: ViTConfig):
    """A LoadReport, so callers print it like any other load's."""
    from ..config import variant_name
    from .reader import LoadReport

    kind = "int8 (onnxruntime quantization)" if meta.get("int8") else "fp32"
    report = LoadReport(str(path), "onnx", f"{kind}, onnxruntime CPUExecutionProvider",
                        config=config, variant=variant_name(config))
    report.notes += list(meta.get("notes", []))
    return report


def open_onnx(path: str | Path, threads: int | None = None, features: bool = False):
    """Open a vitkit ONNX export: model (OnnxViT), classes, spec, report, source, name.

    A missing file raises FileNotFoundError; a corrupt or non-ONNX file, or an ONNX model
    without vitkit metadata, raises a one-line ValueError naming the path. A features export
    is refused (one line) unless features=True, which opens only those (model: OnnxFeatures).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ValueError(f"{path}: running ONNX files needs onnxruntime (pip install 'vitkit[export]')"
                         ) from None
    try:
        sess = session(path, threads)
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph, ...
        raise ValueError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path}: an ONNX model without vitkit metadata (not exported by vitkit export)")
    meta, config, spec = parse(text, str(path))
    if is_features_export(meta) != features:
        raise ValueError(refusal(path) if not features else f"{path}: a classifier export, not a "
                         "features export (vitkit export --features true)")
    model = (OnnxFeatures if features else OnnxViT)(sess, config, meta, path).eval()
    classes = list(meta["classes"])
    opened = dict(model=model, classes=classes, spec=spec, report=_report(path, meta, config),
                  source=str(path), name=path.stem,
                  extra={MULTILABEL_KEY: meta[MULTILABEL_KEY]} if meta.get(MULTILABEL_KEY) else {})
    return OpenedModel(**opened)
