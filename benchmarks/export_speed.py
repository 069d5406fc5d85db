"""Exported files against vitkit itself: speed, size and accuracy.

    python benchmarks/export_speed.py                 # speed table (S/16, B/16 at 224, CIFAR-10, digits)
    python benchmarks/export_speed.py --accuracy      # CIFAR-10 test set: fp32 / int8 against eager
    python benchmarks/export_speed.py --variants      # the int8 alternatives: accuracy, speed, size

Speed: vitkit eager fp32, PyTorch bf16 (where the CPU has native bf16), vitkit's default
inference path (`prepare` at precision "auto" with engine "auto", as a server runs it: on a
CPU the model's ONNX graph by onnxruntime or OpenVINO where vitkit.export.route measured that
faster on this machine, else PyTorch; VITKIT_NATIVE_BF16=0 runs it as a CPU without native
bf16 would), ONNX Runtime fp32 and ONNX Runtime int8 run the same model, interleaved (the
order rotates each round) at batch 1 and 8; medians of the rounds.
The CIFAR-10 model is the trained run at --run (model.safetensors + config.json) when it is
there, else an untrained model of configs/cifar10.yaml (speed does not depend on the weights);
the digits model likewise (--digits-run, else configs/digits.yaml, the model `make run` trains).
Accuracy uses the CIFAR-10 JPEG test images at --data/test/<class>/*.jpg.

OpenVINO rows (pip install 'vitkit[openvino,nncf]'; "not installed" without it) run the same ONNX
files: f32 (INFERENCE_PRECISION_HINT f32), OpenVINO's default precision (bf16 where the CPU
has native bf16 or AMX, else f32; the row names the one it used), int8 from NNCF post-training
quantization of the fp32 file (about 100 calibration images of the data the model is for:
the digits training split, CIFAR-10 training images at --data/train, else crops of
scikit-learn's two sample photos; the table says which) and vitkit's ONNX Runtime int8 file.
Performance hint LATENCY at batch 1; at batch 8 LATENCY and THROUGHPUT (the batch split over
the compiled model's streams as asynchronous requests) are both timed. Threads: --threads,
else every core. Compiled models go to a CACHE_DIR (compile time, cold and from the cache, is
printed). A second table gives each path's logits against eager fp32 on held-out images.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit import ViT, ViTConfig, variant  # noqa: E402
from vitkit.data.preprocess import InputSpec, image_to_uint8, normalize  # noqa: E402
from vitkit.export import export_model  # noqa: E402
from vitkit.export.onnx import export_onnx  # noqa: E402
from vitkit.export.prepare import export_ready, metadata  # noqa: E402
from vitkit.export.quantize import quantize_onnx  # noqa: E402
from vitkit.export.runtime import session  # noqa: E402
from vitkit.formats.openvino import kept_signal_stack  # noqa: E402
from vitkit.inference import prepare  # noqa: E402
from vitkit.precision import cpu_name, inference_precision, native_bf16  # noqa: E402

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
    return untrained(cfg), [str(i) for i in range(10)], spec, "CIFAR-10 hybrid (untrained: no run found)"


def untrained(cfg: ViTConfig) -> ViT:
    torch.manual_seed(0)
    model = ViT(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head gives zero logits: nothing to compare
    return model


def digits_model(run: Path) -> tuple[ViT, list[str], InputSpec, str]:
    """The digits model `make run` trains (configs/digits.yaml), trained when `run` holds it."""
    if (run / "model.safetensors").is_file():
        from vitkit.loading import open_model

        o = open_model(run)
        return o.model, o.classes, o.spec, f"digits hybrid (trained run {run})"
    import yaml

    m = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())["model"]
    spec = digits_data()[2]
    cfg = ViTConfig(image_size=spec.image_size, num_channels=spec.channels, num_classes=10, **m)
    return untrained(cfg), [str(i) for i in range(10)], spec, "digits hybrid (untrained: no run found)"


def digits_data() -> tuple[torch.Tensor, torch.Tensor, InputSpec]:
    """scikit-learn's digits as vitkit trains on them: training and held-out uint8 images, spec."""
    from vitkit.data.pipeline import DataConfig
    from vitkit.plan import load_data

    d = load_data(DataConfig(dataset="digits"))
    return d.train.images, d.val.images, d.spec


def imagenet_model(name: str) -> tuple[ViT, list[str], InputSpec, str]:
    model = untrained(variant(name, num_classes=1000))  # a zero head would make int8 trivially exact
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
    """Eager fp32; where the CPU has native bf16, PyTorch bf16 (what the default ran before it
    timed the graph's runtimes against it); and vitkit's default inference path: `prepare` at
    precision "auto" with engine "auto", as a server runs it (vitkit.export.route: the graph by
    onnxruntime or OpenVINO where measured faster on this machine, else PyTorch)."""
    eager = export_ready(model)[0]
    precision = inference_precision("auto", "cpu")
    default = prepare(copy.deepcopy(eager), "cpu", "auto", engine="auto", images=None)

    def run_eager(x):
        with torch.inference_mode():
            return eager(x)

    runners = {"vitkit eager fp32": run_eager}
    if precision == "bf16":
        runners["vitkit PyTorch bf16"] = prepare(copy.deepcopy(eager), "cpu", "bf16", engine="torch")
    runners[f"vitkit default ({default.precision}, {default.engine})"] = default
    return runners, precision


# ---- OpenVINO ---------------------------------------------------------------------------------

OV_MISSING = "not installed"
HELD_OUT = {"S/16": 32, "B/16": 16, "cifar": 200, "digits": 360}  # logit comparison images


def cpu_features() -> str:
    """The CPU from /proc/cpuinfo: model name, family / model, and the flags that decide bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return f"unknown CPU, {os.cpu_count()} cores"
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())

    def has(flag: str) -> str:
        return "yes" if flag in flags else "no"

    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}, {cores()} cores); native bf16 (avx512_bf16): "
            f"{has('avx512_bf16')}, AMX (amx_tile): {has('amx_tile')}, AVX-512: {has('avx512f')}, "
            f"VNNI: {has('avx512_vnni') if 'avx512_vnni' in flags else has('avx_vnni')}")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def openvino_problem() -> str | None:
    """Why the OpenVINO rows cannot run (None when they can)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return OV_MISSING
    return None


class OpenVINO:
    """One model's OpenVINO runners: compiled (and cached) per source file, batch and hint."""

    def __init__(self, files: dict[str, Path], folder: Path, static: bool):
        import openvino as ov

        self.ov, self.core, self.files, self.static = ov, ov.Core(), dict(files), static
        self.cache = folder / "openvino-cache"
        self.compile_s: dict[str, tuple[float, float]] = {}

    def quantize(self, calib: torch.Tensor, out: Path) -> float:
        """NNCF post-training int8 of the fp32 file from normalized calibration images; seconds."""
        import nncf

        start = time.perf_counter()
        model = self.core.read_model(str(self.files["fp32"]))
        data = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))])
        q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
        self.ov.save_model(q, str(out))
        self.files["nncf"] = out
        return time.perf_counter() - start

    def compiled(self, source: str, precision: str | None, hint: str, batch: int | None):
        """source: a key of files; precision "f32" or None (OpenVINO's default); batch: the
        batch to reshape to with --ov-static (THROUGHPUT: each stream's share of it), else the
        file's dynamic batch."""
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": THREADS or cores(),
                  "CACHE_DIR": str(self.cache)}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        model = str(self.files[source])
        if batch is not None and self.static:
            if hint == "THROUGHPUT":
                dynamic = self.core.compile_model(model, "CPU", config)
                n = dynamic.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
                batch = batch // n if batch % n == 0 else batch
            model = self.core.read_model(model)
            shape = model.input(0).get_partial_shape()
            shape[0] = self.ov.Dimension(batch)
            model.reshape(shape)
        times = []
        for _ in range(1 if source in self.compile_s else 2):  # the first time: cold, then from CACHE_DIR
            start = time.perf_counter()
            with kept_signal_stack():  # as vitkit compiles: the thread keeps its own signal stack
                compiled = self.core.compile_model(model, "CPU", config)
            times.append(time.perf_counter() - start)
        self.compile_s.setdefault(source, (times[0], times[-1]))
        return compiled

    def label(self, path: str, compiled, precision: str | None, hint: str) -> str:
        """The row's name: the path, the precision OpenVINO chose (int8 files: of the float
        ops), the hint and, for THROUGHPUT, the streams."""
        used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        details = [] if precision else [used if path == "OpenVINO default" else f"float ops {used}"]
        streams = compiled.get_property("NUM_STREAMS")
        details.append(hint if hint == "LATENCY" else f"{hint}, {streams} stream{'s' * (streams != 1)}")
        return f"{path} ({', '.join(details)})"

    def runner(self, compiled, hint: str):
        """A callable on a normalized torch batch: one synchronous request (LATENCY), or the
        batch split over the streams as asynchronous requests (THROUGHPUT)."""
        if hint == "LATENCY":
            request = compiled.create_infer_request()
            return lambda x: request.infer({0: x.numpy()}, share_inputs=True)[0]
        n = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        queue, out = self.ov.AsyncInferQueue(compiled, n), {}
        queue.set_callback(lambda request, i: out.__setitem__(i, request.get_output_tensor(0).data.copy()))
        batch = compiled.input(0).get_partial_shape()[0]  # static (--ov-static): each request's batch

        def run(x: torch.Tensor):
            parts = len(x) // batch.get_length() if batch.is_static else min(n, len(x))
            chunks = np.array_split(x.numpy(), parts)
            for i, chunk in enumerate(chunks):
                queue.start_async({0: chunk}, userdata=i, share_inputs=True)
            queue.wait_all()
            return np.concatenate([out[i] for i in range(len(chunks))])

        return run


# The OpenVINO rows: (label, source file, INFERENCE_PRECISION_HINT; None: OpenVINO's default).
OV_PATHS = [("OpenVINO f32", "fp32", "f32"), ("OpenVINO default", "fp32", None),
            ("OpenVINO int8 NNCF", "nncf", None), ("OpenVINO on the ORT int8 file", "int8", None)]


def sample_photos(n: int, spec: InputSpec, seed: int) -> torch.Tensor:
    """n random resized crops (uint8) of scikit-learn's two bundled photos: real-image statistics
    where no data set for the model is on disk."""
    from sklearn.datasets import load_sample_images
    from torchvision.transforms import v2

    photos = [torch.tensor(a).permute(2, 0, 1).contiguous() for a in load_sample_images().images]
    crop = v2.RandomResizedCrop(tuple(spec.image_size), scale=(0.05, 1.0), antialias=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x = torch.stack([crop(photos[i % len(photos)]) for i in range(n)])
    if spec.channels == 1:
        x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
    return x


def folder_sample(root: Path, spec: InputSpec, n: int, seed: int) -> torch.Tensor:
    """n images (uint8) drawn evenly over the class folders of root, at the model's size."""
    from PIL import Image

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i, folder in enumerate(folders):
        files = sorted(folder.iterdir())
        k = n // len(folders) + (i < n % len(folders))
        for j in torch.randperm(len(files), generator=g)[:k].tolist():
            with Image.open(files[j]) as im:
                xs.append(image_to_uint8(im, spec.channels, spec.image_size))
    return torch.stack(xs)


def model_images(key: str, spec: InputSpec, args) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(calibration images, held-out images, where they come from), uint8, for one model."""
    held, n = HELD_OUT[key], args.calibration
    if key == "digits":
        train, val, _ = digits_data()
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
        return train[pick], val[:held], f"{n} digits training images (held out: {held} validation)"
    if key == "cifar" and (args.data / "train").is_dir() and (args.data / "test").is_dir():
        calib = folder_sample(args.data / "train", spec, n, 0)
        test = folder_sample(args.data / "test", spec, held, 1)
        return calib, test, f"{len(calib)} CIFAR-10 training images at {args.data} (held out: {len(test)})"
    where = "" if key != "cifar" else f" (no CIFAR-10 JPEGs at {args.data})"
    return (sample_photos(n, spec, 0), sample_photos(held, spec, 1),
            f"{n} random crops of scikit-learn's 2 sample photos{where} (held out: {held} others)")


def run_logits(run, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([as_float(run(x[i:i + batch])) for i in range(0, len(x), batch)])


def as_float(out) -> torch.Tensor:
    """Logits as an fp32 tensor, whether a runner gave a tensor (bf16 included) or an array."""
    return out.float() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out)).float()


def speed(args) -> None:
    import onnxruntime

    ort_threads = THREADS or "default"
    ov_problem = openvino_problem()
    if ov_problem:
        ov_text = f"openvino {ov_problem}"
    else:
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        try:
            import nncf

            nncf_text = f"nncf {nncf.__version__}"
        except ImportError:
            nncf_text = "nncf not installed"
        ov_text = (f"openvino {ov.get_version().split('-')[0]} ({THREADS or cores()} threads; CPU "
                   f"capabilities {', '.join(caps)}), {nncf_text}")
    bf16 = "native" if native_bf16("cpu") else "no native"
    print(f"CPU: {cpu_features()}")
    print(f"vitkit sees {bf16} bf16; torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"onnxruntime {onnxruntime.__version__} ({ort_threads} threads); {ov_text}", flush=True)
    rows, diffs = [], []
    builders = {"S/16": lambda: imagenet_model("S/16"), "B/16": lambda: imagenet_model("B/16"),
                "cifar": lambda: cifar_model(args.run), "digits": lambda: digits_model(args.digits_run)}
    for key in args.models:
        model, classes, spec, label = builders[key]()
        name = label.split(" (")[0]
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["VITKIT_CACHE_DIR"] = tmp  # the ONNX route's graph, exported afresh
            files = write_files(model, classes, spec, Path(tmp))
            sizes = {k: p.stat().st_size for k, p in files.items()}
            runners, _ = torch_runners(model)
            default_name = next(n for n in runners if n.startswith("vitkit default"))
            runners["ONNX Runtime fp32"] = ort_runner(files["fp32"])
            runners["ONNX Runtime int8"] = ort_runner(files["int8"])
            print(f"{label}: fp32 file {sizes['fp32'] / 2**20:.2f} MiB, int8 file "
                  f"{sizes['int8'] / 2**20:.2f} MiB ({sizes['int8'] / sizes['fp32']:.3f}x)", flush=True)
            calib, held, source = model_images(key, spec, args)
            ovino, missing = None, {}
            if ov_problem:
                missing = {label: ov_problem for label, _, _ in OV_PATHS}
            else:
                ovino = OpenVINO(files, Path(tmp), args.ov_static)
                try:
                    seconds = ovino.quantize(normalize(calib, spec), Path(tmp) / "nncf_int8.xml")
                    print(f"  NNCF int8: {source}; quantized in {seconds:.1f} s", flush=True)
                except ImportError:
                    missing["OpenVINO int8 NNCF"] = "nncf not installed"
            for batch in (1, 8):
                x = torch.randn(batch, *((spec.channels,) + tuple(spec.image_size)))
                timing = dict(runners)
                if ovino is not None:
                    for hint in ("LATENCY",) if batch == 1 else ("LATENCY", "THROUGHPUT"):
                        for path_label, source_key, precision in OV_PATHS:
                            if path_label in missing:
                                continue
                            compiled = ovino.compiled(source_key, precision, hint, batch)
                            shown = ovino.label(path_label, compiled, precision, hint)
                            timing[shown] = ovino.runner(compiled, hint)
                r = timed(timing, x, args.rounds, args.min_time)
                for run_name, ips in r.items():
                    rows.append((name, batch, run_name, ips, ips / r["vitkit eager fp32"],
                                 ips / r[default_name], ips / r["ONNX Runtime fp32"]))
                for path_label, why in missing.items():
                    rows.append((name, batch, path_label, why, None, None, None))
            if ovino is not None:
                cold, warm = ovino.compile_s["fp32"]
                print(f"  OpenVINO compile of the fp32 file: {cold:.2f} s cold, {warm:.2f} s from CACHE_DIR",
                      flush=True)
            # logits against eager fp32 on held-out images, each path at its dynamic batch
            eager = export_ready(model)[0]
            xh = normalize(held, spec)
            ref = run_logits(eager, xh)
            checks = {n: runners[n] for n in (default_name, "ONNX Runtime fp32", "ONNX Runtime int8")}
            if ovino is not None:
                for path_label, source_key, precision in OV_PATHS:
                    if path_label not in missing:
                        compiled = ovino.compiled(source_key, precision, "LATENCY", None)
                        checks[ovino.label(path_label, compiled, precision, "LATENCY")] = ovino.runner(
                            compiled, "LATENCY")
                compiled = ovino.compiled("fp32", "f32", "THROUGHPUT", None)  # the split batch, in order
                checks[ovino.label("OpenVINO f32", compiled, "f32", "THROUGHPUT")] = ovino.runner(
                    compiled, "THROUGHPUT")
            scale = ref.abs().max().item()
            for check_name, run in checks.items():
                got = run_logits(run, xh)
                agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
                diffs.append((name, len(xh), scale, check_name, (got - ref).abs().max().item(), agree))
            for path_label, why in missing.items():
                diffs.append((name, len(xh), scale, path_label, why, None))
    print("\n| model | batch | path | img/s | vs eager fp32 | vs vitkit default | vs ORT fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, run_name, ips, r_eager, r_default, r_ort in rows:
        if isinstance(ips, str):
            print(f"| {name} | {batch} | {run_name} | {ips} | - | - | - |")
        else:
            print(f"| {name} | {batch} | {run_name} | {ips:.1f} | {r_eager:.2f}x | {r_default:.2f}x "
                  f"| {r_ort:.2f}x |")
    print("\nLogits against vitkit eager fp32 on held-out images (max |eager logit| for scale):\n")
    print("| model | images | max abs eager logit | path | max abs logit diff | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for name, n, scale, check_name, diff, agree in diffs:
        if isinstance(diff, str):
            print(f"| {name} | {n} | {scale:.3g} | {check_name} | {diff} | - |")
        else:
            print(f"| {name} | {n} | {scale:.3g} | {check_name} | {diff:.2e} | {agree:.2%} |")


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
    ap.add_argument("--digits-run", type=Path, default=ROOT / "runs" / "digits",
                    help="the trained digits run directory (make run writes it)")
    ap.add_argument("--models", nargs="+", default=["S/16", "B/16", "cifar", "digits"],
                    choices=["S/16", "B/16", "cifar", "digits"], help="speed: the models to time")
    ap.add_argument("--calibration", type=int, default=100, help="NNCF int8: calibration images per model")
    ap.add_argument("--ov-static", action="store_true",
                    help="OpenVINO: reshape each model to the timed batch before compiling (else the "
                         "file's dynamic batch, as an engine serving any batch would run it)")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads for torch and onnxruntime (0: each library's default)")
    ap.add_argument("--ov-paths", nargs="+", default=[label for label, _, _ in OV_PATHS],
                    help="the OpenVINO rows to run, by label (on a CPU with AMX, compiling OpenVINO's f32 "
                         "and bf16 models in one process where PyTorch runs bf16 crashed it: run them apart)")
    args = ap.parse_args()
    OV_PATHS[:] = [p for p in OV_PATHS if p[0] in args.ov_paths]
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
