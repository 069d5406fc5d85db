"""vitkit against timm and Hugging Face transformers on identical architectures, in one run
(`vitkit bench`, or benchmarks/speed.py).

For every workload the three libraries are timed interleaved (vitkit, timm, HF, then rotated)
after warm-up, and the median of the repeats is reported with the ratios vitkit/timm and
vitkit/HF, training peak memory, and MFU against a matmul ceiling measured in the same run.
With compiled=True vitkit under torch.compile (inductor) is timed in the same rotation, its
compile time (the warm-up's first call) printed by vitkit.compile.
Timings on shared machines move from run to run; compare the ratios, which come from
interleaved measurements in one process. timm and transformers must be installed.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .compile import compile_model
from .config import ViTConfig, variant
from .formats.hf import config_to_hf
from .formats.timm import timm_kwargs
from .inference import prepare
from .info import forward_macs
from .model import ViT
from .precision import autocast, native_bf16

LIBS = ("vitkit", "timm", "hf")
COMPILED = "vitkit compiled"  # vitkit under torch.compile, timed beside the others when asked for
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CIFAR = ViTConfig(image_size=32, patch_size=4, hidden_size=192, num_layers=9, num_heads=12, mlp_size=384,
                  num_classes=10)


@dataclass
class Workload:
    name: str
    config: ViTConfig
    batch: int
    mode: str  # "infer" or "train"
    precision: str  # "fp32" or "bf16"

    @property
    def flops_per_image(self) -> float:
        f = 2 * forward_macs(self.config)
        return f * 3 if self.mode == "train" else f  # backward costs about twice the forward


def workloads(device: str) -> list[Workload]:
    out = []
    for mode in ("infer", "train"):
        for prec in ("fp32", "bf16"):
            if mode == "infer":
                for name in ("Ti/16", "S/16", "B/16"):
                    for b in (1, 8):
                        out.append(Workload(name, variant(name), b, mode, prec))
                if device == "cuda":
                    out.append(Workload("B/16", variant("B/16"), 256, mode, prec))
            else:
                out.append(Workload("CIFAR ViT", CIFAR, 128, mode, prec))
                out.append(Workload("S/16", variant("S/16"), 32, mode, prec))
                if device == "cuda" and prec == "bf16":
                    out.append(Workload("B/16", variant("B/16"), 128, mode, prec))
    return out


class HFLogits(torch.nn.Module):
    """transformers' ViTForImageClassification returning plain logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        import transformers

        hf_cfg = transformers.ViTConfig(**config_to_hf(cfg), attn_implementation="sdpa")
        self.inner = transformers.ViTForImageClassification(hf_cfg)

    def forward(self, x):
        return self.inner(pixel_values=x).logits


def build(lib: str, cfg: ViTConfig, device: str) -> torch.nn.Module:
    if lib in ("vitkit", COMPILED):
        m = ViT(cfg)
    elif lib == "timm":
        from timm.models.vision_transformer import VisionTransformer

        m = VisionTransformer(**timm_kwargs(cfg))
    else:
        m = HFLogits(cfg)
    return m.to(device)


def make_optimizer(lib: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Each library's AdamW as its users get it: vitkit's trainer builds its own (decay on
    matrices only, fused kernel); timm and HF users typically take torch's default AdamW."""
    if lib in ("vitkit", COMPILED):
        from .training.config import OptimConfig
        from .training.schedule import build_optimizer

        return build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05))
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)


def make_step(lib: str, model, w: Workload, device: str):
    h, wd = w.config.image_hw
    x = torch.randn(w.batch, 3, h, wd, device=device)
    if w.mode == "infer":
        # vitkit runs as predict does (vitkit.inference, bf16 weights stored once), in PyTorch;
        # the others run as their users do, under autocast
        model.eval()
        if lib in ("vitkit", COMPILED):
            runner = prepare(model, device, w.precision, engine="torch", compile=lib == COMPILED)
        else:
            runner = prepare(model, device, w.precision, engine="torch", compile=False, bf16_weights=False)

        @torch.inference_mode()
        def step():
            return runner(x)
        return step
    model.train()
    compile_model(model, lib == COMPILED, label="model for training")
    y = torch.randint(0, w.config.num_classes, (w.batch,), device=device)
    opt = make_optimizer(lib, model)

    def step():
        with autocast(torch.device(device), w.precision):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def profiled_events(step) -> list[dict]:
    """The trace events (allocation records included) of one call of step() on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        return json.loads(trace.read_text())["traceEvents"]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: str, dtype: torch.dtype, n: int | None = None) -> float:
    """GFLOP/s of a large square matrix product: the roofline MFU is measured against."""
    n = n or (8192 if device == "cuda" else 2048)  # a GPU needs a big product to reach its peak
    if device == "cpu" and dtype == torch.bfloat16 and not native_bf16("cpu"):
        n = min(n, 512)  # emulated bf16 runs one such product for minutes; 512 is still compute-bound
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def peak_memory_mib(lib: str, w: Workload, device: str) -> float:
    """Training peak memory: the most tensor memory held above the level before one training
    step (taken after a warm-up step, so optimizer state already exists). CUDA's allocator
    counts it; on the CPU the profiler records every allocation and free with the running
    total. Unlike the resident set, this does not depend on when malloc returns pages."""
    torch.manual_seed(0)
    step = make_step(lib, build(lib, w.config, device), w, device)
    step()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    events = profiled_events(step)
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not mem:
        raise RuntimeError("the profiler recorded no CPU allocations")
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return (max(m["Total Allocated"] for m in mem) - base) / 2**20


def time_workload(w: Workload, device: str, repeats: int, libs: tuple[str, ...] = LIBS) -> dict[str, float]:
    """Median seconds per step for each library, measured interleaved."""
    steps = {}
    for lib in libs:
        torch.manual_seed(0)
        steps[lib] = make_step(lib, build(lib, w.config, device), w, device)
        for _ in range(2):  # warm-up: allocator, kernels, optimizer state
            steps[lib]()
    sync(device)
    times: dict[str, list[float]] = {lib: [] for lib in libs}
    for r in range(repeats):
        order = libs[r % len(libs):] + libs[:r % len(libs)]  # rotate who goes first
        for lib in order:
            sync(device)
            t = time.perf_counter()
            steps[lib]()
            sync(device)
            times[lib].append(time.perf_counter() - t)
    return {lib: statistics.median(ts) for lib, ts in times.items()}


def loader_speed() -> list[tuple[str, float]]:
    """Images/s of the training input pipeline alone (batching, augmentation, normalization)
    for the digits and CIFAR recipes, on in-memory uint8 data of their shapes."""
    import yaml

    from .data.arrays import ImageArrays
    from .data.augment import AugmentConfig, BatchAugment
    from .data.pipeline import array_batches

    out = []
    for recipe, shape in (("digits", (1437, 1, 8, 8)), ("cifar10", (50000, 3, 32, 32))):
        if not (CONFIGS / f"{recipe}.yaml").is_file():  # installed without the repository
            continue
        cfg = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
        aug = BatchAugment(AugmentConfig(**cfg.get("augment", {})), 10, [0.5] * shape[1], [0.5] * shape[1])
        data = ImageArrays(torch.randint(0, 256, shape, dtype=torch.uint8),
                           torch.randint(0, 10, (shape[0],)), [str(i) for i in range(10)])
        t, n = time.perf_counter(), 0
        for x, y in array_batches(data, 128, epoch=0, seed=0):
            aug(x, y)
            n += len(x)
        out.append((recipe, n / (time.perf_counter() - t)))
    return out


def run(device: str = "cpu", repeats: int = 5, only: str | None = None, memory: bool = True,
        json_path: Path | None = None, selected: list[Workload] | None = None,
        loader: bool = True, compiled: bool = False) -> dict:
    """Time every workload (or `selected`), print the table, return (and write) the results;
    `json_path` is checked before any work."""
    if json_path is not None:
        from .checkpoint import check_output_file

        check_output_file(json_path)
    try:
        import timm  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ValueError(f"the benchmark compares against timm and transformers: {e}") from None
    ceil = {"fp32": matmul_ceiling(device, torch.float32), "bf16": matmul_ceiling(device, torch.bfloat16)}
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; matmul ceiling "
          f"fp32 {ceil['fp32']:.0f} GFLOP/s, bf16 {ceil['bf16']:.0f} GFLOP/s", flush=True)
    rows = []
    print("| workload | mode | prec | batch | vitkit img/s | timm img/s | HF img/s | vs timm | vs HF "
          "| vitkit MFU | timm MFU | peak MiB vitkit / timm / HF |")
    print("|" + "---|" * 12, flush=True)
    for w in selected or workloads(device):
        if only and w.mode != only:
            continue
        sec = time_workload(w, device, repeats, LIBS + (COMPILED,) if compiled else LIBS)
        ips = {lib: w.batch / s for lib, s in sec.items()}
        mfu = {lib: ips[lib] * w.flops_per_image / 1e9 / ceil[w.precision] for lib in LIBS}
        mem = None
        if w.mode == "train" and memory:
            mem = {lib: peak_memory_mib(lib, w, device) for lib in LIBS}
        row = dict(workload=w.name, mode=w.mode, precision=w.precision, batch=w.batch, images_per_s=ips,
                   vs_timm=ips["vitkit"] / ips["timm"], vs_hf=ips["vitkit"] / ips["hf"], mfu=mfu,
                   peak_mib=mem)
        if compiled:
            row["compiled_vs_eager"] = ips[COMPILED] / ips["vitkit"]
        rows.append(row)
        mem_s = " / ".join(f"{mem[lib]:.0f}" for lib in LIBS) if mem else "-"
        print(f"| {w.name} | {w.mode} | {w.precision} | {w.batch} | {ips['vitkit']:.1f} | {ips['timm']:.1f} "
              f"| {ips['hf']:.1f} | {row['vs_timm']:.2f}x | {row['vs_hf']:.2f}x | {mfu['vitkit']:.0%} "
              f"| {mfu['timm']:.0%} | {mem_s} |", flush=True)
        if compiled:
            print(f"| {w.name} | {w.mode} | {w.precision} | {w.batch} | compiled {ips[COMPILED]:.1f} | "
                  f"{row['compiled_vs_eager']:.2f}x eager | | | | | | |", flush=True)
    # the bf16 fast path against the fp32 baselines
    print("\nvitkit bf16 against timm fp32 (same workload, same run):")
    for r in rows:
        if r["precision"] != "bf16":
            continue
        base = next((b for b in rows if b["precision"] == "fp32" and b["workload"] == r["workload"]
                     and b["mode"] == r["mode"] and b["batch"] == r["batch"]), None)
        if base:
            print(f"  {r['workload']} {r['mode']} batch {r['batch']}: "
                  f"{r['images_per_s']['vitkit'] / base['images_per_s']['timm']:.2f}x")
    speeds = loader_speed() if loader else []
    if speeds:
        print("\ninput pipeline alone (batching + augmentation + normalization, in-memory uint8):")
    for recipe, ips in speeds:
        print(f"  {recipe} recipe: {ips:,.0f} img/s")
    result = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "ceiling_gflops": ceil, "rows": rows, "loader_images_per_s": dict(speeds)}
    if json_path is not None:
        from .files import atomic_write_json

        atomic_write_json(json_path, json.loads(json.dumps(result)))
        print(f"\nwrote {json_path}")
    return result

