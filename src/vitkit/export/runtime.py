"""Running an exported ONNX file with onnxruntime behind vitkit's model interface.

`open_onnx(path)` reads the vitkit metadata from the file itself and returns the model as
a parameter-free torch module, so code written for vitkit's ViT (eval, forward on the
normalized batch, predict_proba, config) runs the file unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ViTConfig
from ..opened import OpenedModel
from .prepare import METADATA_KEY, parse


class OnnxViT(nn.Module):
    """An onnxruntime session (CPUExecutionProvider) as a torch module without parameters."""

    def __init__(self, session, config: ViTConfig, meta: dict, path: Path):
        super().__init__()
        self.session = session
        self.config = config
        self.meta = meta
        self.path = path
        self.input_name = session.get_inputs()[0].name
        self.int8 = bool(meta.get("int8"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits (B, classes) for a normalized float batch (B, C, H, W)."""
        h, w = self.config.image_hw
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.config.num_channels, h, w):
            raise ValueError(f"{self.path.name} takes (B, {self.config.num_channels}, {h}, {w}) inputs "
                             f"(the image size is fixed at export), got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(out).to(x.device)

    def __deepcopy__(self, memo: dict) -> OnnxViT:
        """A copy with its own session (onnxruntime sessions cannot be copied)."""
        threads = self.session.get_session_options().intra_op_num_threads or None
        copied = OnnxViT(session(self.path, threads), self.config, dict(self.meta), self.path)
        return copied.train(self.training)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: softmax over the logits."""
        return self(x).float().softmax(dim=-1)

    def extra_repr(self) -> str:
        c = self.config
        kind = "int8" if self.int8 else "fp32"
        return f"{self.path.name}, onnxruntime {kind}, D={c.hidden_size} L={c.num_layers}, {c.image_hw}"


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; `threads` sets intra-op threads (default: onnxruntime's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _report(path: Path, meta: dict, config: ViTConfig):
    """A LoadReport, so callers print it like any other load's."""
    from ..config import variant_name
    from ..formats.reader import LoadReport

    kind = "int8 (onnxruntime quantization)" if meta.get("int8") else "fp32"
    report = LoadReport(str(path), "onnx", f"{kind}, onnxruntime CPUExecutionProvider",
                        config=config, variant=variant_name(config))
    report.notes += list(meta.get("notes", []))
    return report


def open_onnx(path: str | Path, threads: int | None = None):
    """Open a vitkit ONNX export: model (OnnxViT), classes, spec, report, source, name.

    A missing file raises FileNotFoundError; a corrupt or non-ONNX file, or an ONNX model
    without vitkit metadata, raises a one-line ValueError naming the path.
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
        raise ValueError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
    text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path}: an ONNX model without vitkit metadata (not exported by vitkit export)")
    meta, config, spec = parse(text, str(path))
    model = OnnxViT(sess, config, meta, path).eval()
    classes = list(meta["classes"])
    opened = dict(model=model, classes=classes, spec=spec, report=_report(path, meta, config),
                  source=str(path), name=path.stem)
    return OpenedModel(**opened)
