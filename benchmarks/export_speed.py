"""Exported files against vitkit itself: speed, size and accuracy.

    python benchmarks/export_speed.py                 # speed table (S/16, B/16 at 224, the CIFAR-10 model)
    python benchmarks/export_speed.py --accuracy      # CIFAR-10 test set: fp32 / int8 against eager
    python benchmarks/export_speed.py --variants      # the int8 alternatives: accuracy, speed, size

Speed: vitkit eager fp32, vitkit's default inference path (inference precision "auto": bf16
where the CPU has native bf16, else fp32, which on a CPU is the ONNX route of
vitkit.export.route; VITKIT_NATIVE_BF16=0 runs it as such a CPU would), ONNX Runtime fp32 and
ONNX Runtime int8 run the same
model, interleaved (the order rotates each round) at batch 1 and 8; medians of the rounds.
The CIFAR-10 model is the trained run at --run (model.safetensors + config.json) when it is
there, else an untrained model of configs/cifar10.yaml (speed does not depend on the weights).
Accuracy uses the CIFAR-10 JPEG test images at --data/test/<class>/*.jpg.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit import ViT, ViTConfig, variant  # noqa: E402
from vitkit.bench import cpu_name  # noqa: E402
from vitkit.data.preprocess import InputSpec, image_to_uint8, normalize  # noqa: E402
from vitkit.export import export_model  # noqa: E402
from vitkit.export.onnx import export_onnx  # noqa: E402
from vitkit.export.prepare import export_ready, metadata  # noqa: E402
from vitkit.export.quantize import quantize_onnx  # noqa: E402
from vitkit.export.runtime import OnnxViT, session  # noqa: E402
from vitkit.precision import autocast, for_inference, inference_precision, native_bf16  # noqa: E402

RUN, DATA = Path("/tmp/vitkit-cifar/run"), Path("/tmp/vitkit-cifar/cifar10")


def cifar_model(run: Path) -> tuple[ViT, list[str], InputSpec, str]:
    """The trained CIFAR-10 run, or an untrained model of the recipe's config."""
    if (run / "model.safetensors").is_file():
        from vitkit.loading import open_model

        o = open_model(run)
        return o.model, o.classes, o.spec, f"CIFAR-10 hybrid (trained run {run})"
    import yaml

    m = yaml.safe_load((ROOT / "configs" / "cifar10.yaml").read_text())["model"]
    cfg = ViTConfig(image_size=32, num_classes=10, **m)
    spec = InputSpec((32, 32), 3, [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261])
    return ViT(cfg).eval(), [str(i) for i in range(10)], spec, "CIFAR-10 hybrid (untrained: no run found)"


def imagenet_model(name: str) -> tuple[ViT, list[str], InputSpec, str]:
    torch.manual_seed(0)
    model = ViT(variant(name, num_classes=1000)).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would make int8 trivially exact
    return model, [str(i) for i in range(1000)], InputSpec(), f"{name} at 224 (random weights)"


def s16_model() -> tuple[ViT, list[str], InputSpec, str]:
    return imagenet_model("S/16")


def write_files(model: ViT, classes, spec, folder: Path) -> dict[str, Path]:
    fp32, _ = export_model(model, classes, spec, folder / "fp32.onnx")
    int8, _ = export_model(model, classes, spec, folder / "int8.onnx", int8=True)
    return {"fp32": fp32, "int8": int8}


def timed(runners: dict, x: torch.Tensor, rounds: int, min_time: float) -> dict[str, float]:
    """Images/s of each runner on x: median over rounds; the order rotates each round."""
    names = list(runners)
    for name in names:  # warm-up
        runners[name](x)
        runners[name](x)
    per_image: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            calls, t0 = 0, time.perf_counter()
            while True:
                runners[name](x)
                calls += 1
                if time.perf_counter() - t0 >= min_time:
                    break
            per_image[name].append((time.perf_counter() - t0) / (calls * len(x)))
    return {n: 1.0 / statistics.median(v) for n, v in per_image.items()}


THREADS: int | None = None  # --threads: intra-op threads of torch and onnxruntime alike


def ort_runner(path: Path):
    sess = session(path, THREADS)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})[0]


def torch_runners(model: ViT) -> tuple[dict, str]:
    """Eager fp32, and vitkit's default inference path: for_inference at precision "auto", as
    a server runs it (which in fp32 is the ONNX route, vitkit.export.route)."""
    eager = export_ready(model)[0]
    precision = inference_precision("auto", "cpu")
    default = for_inference(copy.deepcopy(eager), precision, engine="auto", images=None)
    device = torch.device("cpu")
    route = ", ONNX route" if isinstance(default, OnnxViT) else ""

    def run_eager(x):
        with torch.inference_mode():
            return eager(x)

    def run_default(x):
        with torch.inference_mode(), autocast(device, precision):
            return default(x)

    return {"vitkit eager fp32": run_eager, f"vitkit default ({precision}{route})": run_default}, precision


def speed(args) -> None:
    import onnxruntime

    ort_threads = THREADS or "default"
    bf16 = "native" if native_bf16("cpu") else "no native"
    print(f"CPU: {cpu_name()}, {bf16} bf16; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); onnxruntime {onnxruntime.__version__} "
          f"({ort_threads} threads)")
    rows = []
    builders = {"S/16": s16_model, "B/16": lambda: imagenet_model("B/16"),
                "cifar": lambda: cifar_model(args.run)}
    for build in [builders[m] for m in args.models]:
        model, classes, spec, label = build()
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["VITKIT_CACHE_DIR"] = tmp  # the ONNX route's graph, exported afresh
            files = write_files(model, classes, spec, Path(tmp))
            sizes = {k: p.stat().st_size for k, p in files.items()}
            runners, _ = torch_runners(model)
            runners["ONNX Runtime fp32"] = ort_runner(files["fp32"])
            runners["ONNX Runtime int8"] = ort_runner(files["int8"])
            for batch in (1, 8):
                x = torch.randn(batch, *((spec.channels,) + tuple(spec.image_size)))
                r = timed(runners, x, args.rounds, args.min_time)
                for name, ips in r.items():
                    rows.append((label, batch, name, ips, ips / r["vitkit eager fp32"],
                                 ips / r["ONNX Runtime fp32"]))
            print(f"{label}: fp32 file {sizes['fp32'] / 2**20:.2f} MiB, int8 file "
                  f"{sizes['int8'] / 2**20:.2f} MiB ({sizes['int8'] / sizes['fp32']:.3f}x)")
    print("\n| model | batch | path | img/s | vs eager fp32 | vs ORT fp32 |")
    print("|---|---|---|---|---|---|")
    for label, batch, name, ips, r_eager, r_ort in rows:
        print(f"| {label.split(' (')[0]} | {batch} | {name} | {ips:.1f} | {r_eager:.2f}x | {r_ort:.2f}x |")


def read_images(root: Path, classes: list[str], spec: InputSpec, every: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of root/<class>/*.jpg, classes in the model's order."""
    from PIL import Image

    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if sorted(classes) != found:
        raise SystemExit(f"{root}: classes {found} differ from the model's {classes}")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir())[::every]:
            with Image.open(f) as im:
                xs.append(image_to_uint8(im, spec.channels, spec.image_size))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def logits(run, x: torch.Tensor, spec: InputSpec, batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch):
        y = run(normalize(x[i:i + batch], spec))
        out.append(torch.as_tensor(y).float())
    return torch.cat(out)


def accuracy(args) -> None:
    model, classes, spec, label = cifar_model(args.run)
    x, y = read_images(args.data / "test", classes, spec)
    print(f"{label}; {len(x)} test images; CPU: {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(model, classes, spec, Path(tmp))
        eager = export_ready(model)[0]
        with torch.inference_mode():
            ref = logits(eager, x, spec)
        got = {k: logits(ort_runner(p), x, spec) for k, p in files.items()}
        sizes = {k: p.stat().st_size for k, p in files.items()}
        xb = normalize(x[:8], spec)
        r = timed({k: ort_runner(p) for k, p in files.items()}, xb, args.rounds, args.min_time)
    top1 = {k: (v.argmax(1) == y).float().mean().item() for k, v in got.items()}
    top1_eager = (ref.argmax(1) == y).float().mean().item()
    agree = {k: (v.argmax(1) == ref.argmax(1)).float().mean().item() for k, v in got.items()}
    print("\n| file | size | top-1 | top-1 agreement with eager | max abs logit diff "
          "| img/s (ORT, batch 8) |")
    print("|---|---|---|---|---|---|")
    print(f"| vitkit eager fp32 | - | {top1_eager:.2%} | - | - | - |")
    for k in files:
        print(f"| ONNX {k} | {sizes[k] / 2**20:.2f} MiB | {top1[k]:.2%} | {agree[k]:.2%} | "
              f"{(got[k] - ref).abs().max().item():.2e} | {r[k]:.1f} |")
    checks = [("fp32 ONNX top-1 agreement with eager = 100%", agree["fp32"] == 1.0),
              ("int8 top-1 within 0.5 points of fp32", abs(top1["int8"] - top1["fp32"]) <= 0.005),
              ("int8 file <= 0.3x fp32", sizes["int8"] <= 0.3 * sizes["fp32"]),
              ("int8 >= 1.5x ORT fp32 (batch 8)", r["int8"] >= 1.5 * r["fp32"])]
    print()
    for what, ok in checks:
        print(f"{'met' if ok else 'NOT met'}: {what}")


# The int8 alternatives compared with --variants: (label, quantize_onnx options).
VARIANTS = [
    ("dynamic; float: conv, head, attention (default)", dict(mode="dynamic")),
    ("dynamic; attention products int8 too", dict(mode="dynamic", keep_float=("conv", "head"))),
    ("dynamic; patch embedding / stem int8 too (ConvInteger)",
     dict(mode="dynamic", keep_float=("head", "attention"))),
    ("dynamic; MLP float too", dict(mode="dynamic", keep_float=("conv", "head", "attention", "mlp"))),
    ("static QDQ u8; float: conv, head, attention", dict(mode="static")),
    ("static QDQ s8 symmetric; float: conv, head, attention", dict(mode="static", activations="s8")),
    ("static QDQ u8; Adds, LayerNorm, softmax, GELU int8 too", dict(mode="static", all_ops=True)),
    ("static QDQ u8; everything int8", dict(mode="static", all_ops=True, keep_float=())),
]


def variants(args) -> None:
    which = [s16_model] if args.s16 else [lambda: cifar_model(args.run)]
    model, classes, spec, label = which[0]()
    every = args.every
    x = y = None
    if not args.s16:
        x, y = read_images(args.data / "test", classes, spec, every)
        calib, _ = read_images(args.data / "train", classes, spec, 100)  # 500 training images
    else:
        calib = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)  # speed only
    calib = normalize(calib[torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))], spec)
    print(f"{label}; CPU: {cpu_name()}" + ("" if x is None else f"; {len(x)} test images"))
    with tempfile.TemporaryDirectory() as tmp:
        ready = export_ready(model)[0]
        fp32 = export_onnx(ready, metadata(ready.config, classes, spec), Path(tmp) / "fp32.onnx")
        files = {"fp32": fp32}
        for i, (name, opts) in enumerate(VARIANTS):
            if name.startswith(tuple(args.skip)):
                continue
            t0 = time.perf_counter()
            files[name] = quantize_onnx(fp32, Path(tmp) / f"v{i}.onnx", calibration=calib, **opts)
            print(f"  quantized in {time.perf_counter() - t0:.0f} s: {name}", flush=True)
        acc = {}
        if x is not None:
            with torch.inference_mode():
                ref = logits(ready, x, spec)
            for k, p in files.items():
                got = logits(ort_runner(p), x, spec)
                pred = got.argmax(1)
                acc[k] = ((pred == y).float().mean().item(), (pred == ref.argmax(1)).float().mean().item())
                print(f"  {k}: top-1 {acc[k][0]:.2%}, agreement {acc[k][1]:.2%}", flush=True)
        sizes = {k: p.stat().st_size / fp32.stat().st_size for k, p in files.items()}
        speeds = {}
        for batch in (1, 8):
            xb = torch.randn(batch, spec.channels, *spec.image_size)
            runners = {k: ort_runner(p) for k, p in files.items()}
            speeds[batch] = timed(runners, xb, args.rounds, args.min_time)
    print("\n| int8 variant | size vs fp32 | top-1 | agreement with eager "
          "| speed vs ORT fp32, batch 1 | batch 8 |")
    print("|---|---|---|---|---|---|")
    for k in files:
        a = acc.get(k)
        a_txt = f"{a[0]:.2%} | {a[1]:.2%}" if a else "- | -"
        print(f"| {k} | {sizes[k]:.3f}x | {a_txt} | "
              f"{speeds[1][k] / speeds[1]['fp32']:.2f}x | {speeds[8][k] / speeds[8]['fp32']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accuracy", action="store_true", help="CIFAR-10 test set accuracy of the files")
    ap.add_argument("--variants", action="store_true", help="compare the int8 alternatives")
    ap.add_argument("--s16", action="store_true", help="--variants on S/16 (speed and size only)")
    ap.add_argument("--skip", nargs="*", default=[], help="--variants: labels (prefixes) to leave out")
    ap.add_argument("--every", type=int, default=1, help="--variants: every n-th test image")
    ap.add_argument("--run", type=Path, default=RUN, help="the trained CIFAR-10 run directory")
    ap.add_argument("--data", type=Path, default=DATA, help="CIFAR-10 JPEG root (train/, test/)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per path (medians reported)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per path per round")
    ap.add_argument("--models", nargs="+", default=["S/16", "B/16", "cifar"],
                    choices=["S/16", "B/16", "cifar"], help="speed: the models to time")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads for torch and onnxruntime (0: each library's default)")
    args = ap.parse_args()
    if args.threads:
        global THREADS
        THREADS = args.threads
        torch.set_num_threads(args.threads)
    if args.variants:
        variants(args)
    elif args.accuracy:
        accuracy(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
