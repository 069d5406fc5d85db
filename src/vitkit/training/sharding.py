"""Fully sharded data parallel training (FSDP2: torch.distributed.fsdp.fully_shard).

What each process holds: 1/world of every parameter, gradient and optimizer state (and of
the EMA weights), plus, while a block runs, that block's gathered parameters.

- `shard_model` builds the model's skeleton on the meta device (no memory), wraps each
  encoder block in its own FSDP unit, then the root (patch embedding, tokens, final norm,
  head), allocates only the local shards on the training device and fills them from rank 0:
  rank 0 builds the full model on the CPU from the run's seed, exactly as one process
  would, and set_model_state_dict(broadcast_from_rank0=True) sends each rank its shards.
  So a run on any number of processes starts from the same weights as a run on one, and
  only rank 0 ever holds the full fp32 model, on the CPU and without optimizer state.
  With class-token pooling the last block is computed for the class token alone by
  vitkit.fastpath, which calls the block's parts without its forward; FSDP gathers
  parameters in a module's forward hooks, so that block joins the root's unit.
- Mixed precision (GPU with bf16 only): MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32): blocks compute with bf16 copies of the gathered parameters, gradients
  are reduced in fp32 and the sharded fp32 master weights are updated.
- `ShardedEMA`: the exponential moving average of the sharded parameters, itself sharded.
- `save_sharded` / `load_sharded`: torch.distributed.checkpoint (DCP) directories. Every
  rank writes its shard into a temporary directory; after a barrier rank 0 renames it into
  place, so an interrupted save leaves the previous checkpoint loadable. DCP reshards on
  load: a checkpoint written by N processes resumes on M.
- `full_state_dict`: the whole model gathered on rank 0 (CPU), for model.safetensors, which
  predict, export and serve read like any other vitkit model folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import SHARDED_NAME
from ..files import atomic_torch_save

PROGRESS_NAME = "progress.pt"  # inside it: epoch, step, RNG state, metrics (rank 0)


def _fsdp():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    return fully_shard, MixedPrecisionPolicy


def mixed_precision(device: torch.device, precision: str):
    """FSDP's policy: bf16 compute copies and fp32 gradient reduction on GPUs; None otherwise."""
    _, MixedPrecisionPolicy = _fsdp()
    if device.type == "cuda" and precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def _restore_buffers(model: nn.Module) -> None:
    """Recompute the non-persistent buffers (not in any state dict) after to_empty: the fixed
    2D sin-cos position table."""
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.pos_embed == "sincos2d":
        from ..posemb import sincos_2d

        pe = model.pos_embed
        table = sincos_2d(cfg.grid_size, cfg.hidden_size)
        table = torch.cat([torch.zeros(1, cfg.num_prefix_tokens, cfg.hidden_size), table], dim=1)
        with torch.no_grad():
            pe.copy_(table.to(pe.device, pe.dtype))


def shard_model(skeleton: nn.Module, device: torch.device, precision: str,
                full: nn.Module | None = None, broadcast: bool = True) -> nn.Module:
    """Shard `skeleton` (a model on the meta device, activation checkpointing already applied)
    in place and materialize its shards on `device`.

    With broadcast, rank 0 passes `full` (the initial model, on the CPU) and every rank gets
    its shards of those weights; without (resuming), the shards are left for a checkpoint
    to fill.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    fully_shard, _ = _fsdp()
    mp = mixed_precision(device, precision)
    kw = {"mp_policy": mp} if mp is not None else {}
    blocks = list(skeleton.blocks)
    own_unit = blocks[:-1] if _class_token_path(skeleton) else blocks
    for block in own_unit:
        fully_shard(block, **kw)
    fully_shard(skeleton, **kw)
    skeleton.to_empty(device=device)
    _restore_buffers(skeleton)
    if broadcast:
        sd = full.state_dict() if (full is not None and dist.get_rank() == 0) else {}
        set_model_state_dict(skeleton, sd, options=StateDictOptions(full_state_dict=True,
                                                                   broadcast_from_rank0=True))
    return skeleton


def _class_token_path(model: nn.Module) -> bool:
    from .. import fastpath

    return fastpath.uses_class_token_path(model)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on rank 0's CPU (empty on the other ranks); every rank must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_world_size() == 1:  # a group of one hands back the parameters themselves: copy them
        sd = {k: v.detach().clone() for k, v in sd.items()}
    return sd


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What the EMA averages: every parameter and floating-point buffer (as AveragedModel
    with use_buffers=True does), by name."""
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                if b.is_floating_point()]
    return named


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view: writing it writes the DTensor), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


class ShardedEMA:
    """ema = decay * ema + (1 - decay) * weights after every step, on each rank's shards.

    It costs one more fp32 copy of the parameters, sharded like them (4 bytes x params /
    world per rank), and one elementwise pass per step, with no communication; the first
    update copies the weights, as torch.optim.swa_utils' EMA does.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.n_averaged = 0
        self.names = [n for n, _ in _tensors(model)]
        self.tensors = [t.detach().clone() for _, t in _tensors(model)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = [_local(t.detach()) for _, t in _tensors(model)]
        mine = [_local(t) for t in self.tensors]
        if self.n_averaged == 0:
            torch._foreach_copy_(mine, current)
        else:
            torch._foreach_lerp_(mine, current, 1.0 - self.decay)
        self.n_averaged += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model holds the EMA weights inside the block, its own weights again after it."""
        own = [_local(t.detach()) for _, t in _tensors(model)]
        saved = [t.clone() for t in own]
        with torch.no_grad():
            torch._foreach_copy_(own, [_local(t) for t in self.tensors])
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(own, saved)

    def state_dict(self) -> dict:
        return {"n_averaged": torch.tensor(self.n_averaged),
                "tensors": dict(zip(self.names, self.tensors, strict=True))}

    def load_state_dict(self, sd: dict) -> None:
        self.n_averaged = int(sd["n_averaged"])
        with torch.no_grad():
            for name, t in zip(self.names, self.tensors, strict=True):
                t.copy_(sd["tensors"][name])


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema: ShardedEMA | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_sharded(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: ShardedEMA | None, progress: dict) -> Path:
    """Write the run's sharded state to run_dir/state.dcp, replacing the previous one only
    once every rank has written its part. Every rank must call; run_dir must be a directory
    every rank sees (a shared file system when the ranks are on several hosts)."""
    import torch.distributed.checkpoint as dcp

    final = run_dir / SHARDED_NAME
    tmp = run_dir / f".{SHARDED_NAME}.tmp"
    old = run_dir / f".{SHARDED_NAME}.old"
    main = dist.get_rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer, ema), checkpoint_id=str(tmp))
    if main:
        atomic_torch_save(tmp / PROGRESS_NAME, progress)
    dist.barrier()  # every shard is on disk
    if main:
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def sharded_dir(run_dir: Path) -> Path | None:
    """The run's complete sharded checkpoint: state.dcp, or the previous one when a save was
    cut off between its two renames."""
    for name in (SHARDED_NAME, f".{SHARDED_NAME}.old"):
        d = Path(run_dir) / name
        if (d / PROGRESS_NAME).is_file() and (d / ".metadata").is_file():
            return d
    return None


def load_sharded(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: ShardedEMA | None) -> dict:
    """Fill the sharded model, optimizer and EMA from run_dir's checkpoint (written by any
    number of processes); return the progress record. Every rank must call."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    d = sharded_dir(run_dir)
    if d is None:
        raise FileNotFoundError(f"{run_dir}/{SHARDED_NAME}: no sharded training state to resume from")
    state = _dcp_state(model, optimizer, ema)
    dcp.load(state, checkpoint_id=str(d))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    return torch.load(d / PROGRESS_NAME, map_location="cpu", weights_only=True)


def consolidate(run_dir: str | Path, out: str | Path, ema: bool | None = None) -> Path:
    """Write a model folder (config.json + model.safetensors) from an FSDP run's sharded
    checkpoint, in one process with no process group: the EMA weights when the run kept an
    EMA (unless ema=False), else the trained weights."""
    import warnings

    with warnings.catch_warnings():  # DCP says it reads in one process, which is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return _consolidate(Path(run_dir), out, ema)


def _consolidate(run_dir: Path, out: str | Path, ema: bool | None) -> Path:
    import torch.distributed.checkpoint as dcp

    from ..checkpoint import read_config, read_meta, save_pretrained
    from ..model import ViT

    d = sharded_dir(run_dir)
    if d is None:
        raise FileNotFoundError(f"{run_dir}/{SHARDED_NAME}: no sharded checkpoint to consolidate")
    meta = read_meta(run_dir)
    with torch.device("meta"):
        model = ViT(read_config(run_dir))
    model.to_empty(device="cpu")
    _restore_buffers(model)
    names = {k for k in dcp.FileSystemReader(str(d)).read_metadata().state_dict_metadata}
    has_ema = any(k.startswith("ema.tensors.") for k in names)
    use_ema = has_ema if ema is None else ema and has_ema
    sd = model.state_dict()
    if use_ema:
        floats = {n for n, _ in _tensors(model)}
        state = {"ema": {"tensors": {k: v for k, v in sd.items() if k in floats}}}
        rest = {"model": {k: v for k, v in sd.items() if k not in floats}}
        dcp.load(state, checkpoint_id=str(d))
        if rest["model"]:
            dcp.load(rest, checkpoint_id=str(d))
        sd = {**state["ema"]["tensors"], **rest["model"]}
    else:
        state = {"model": sd}
        dcp.load(state, checkpoint_id=str(d))
        sd = state["model"]
    model.load_state_dict(sd)
    extra = {k: v for k, v in meta.items() if k != "model"}
    return save_pretrained(model, out, extra)
