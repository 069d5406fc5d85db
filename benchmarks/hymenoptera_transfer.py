"""Real photos, few of them: training from scratch against fine-tuning a pre-trained ViT.

    python benchmarks/hymenoptera_transfer.py [--arms scratch,linear,lora,full] [--epochs 10]
    python benchmarks/hymenoptera_transfer.py --arms scratch,linear,full --resize squash,crop,keep
    python benchmarks/hymenoptera_transfer.py --arms scratch --resize squash,crop,keep --seeds 0,1,2

Data: the shared hymenoptera photos (ants and bees; 245 training and 153 validation JPEGs of
mixed sizes and aspect ratios, one unreadable GIF), extracted once under /tmp. Teacher of every
fine-tuning arm: the shared ImageNet-1k DeiT-Tiny (a bare timm-layout .safetensors file) opened
with `--load.preprocess deit` (ImageNet mean/std, bicubic, crop 0.875).

- scratch: `vitkit train --data.dataset folder --data.path train --data.val_path val`, every
  default (the photo model, epochs and augmentation vitkit picks for the data);
- linear / lora / full: `vitkit finetune DEIT --mode ...` with the fine-tuning defaults
  (--epochs for lora and full; the linear head trains on features computed once).

--resize runs every arm with each way photos of another shape meet the model's square size
(--data.resize): squash (the whole photo to the square), crop (scaled to cover it, centre crop)
or keep (the aspect ratio kept, at most the square's patch count; batches of one size each).
After training, each arm predicts the 153 validation photos from their files (`vitkit predict`'s
library call: decoding, preprocessing and the model, at vitkit's default inference path) and
the table gives those images/s.

Each arm runs in a fresh process (so peak memory is its own, ru_maxrss) one after the other;
wall time is the whole job (opening the model, decoding and caching the images, training and
the final evaluation), with the decoded-image cache cleared first. Accuracy is on the 153
validation photos. The CPU is named; compare arms of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.precision import cpu_has_amx, cpu_name, native_bf16  # noqa: E402

SHARED = ROOT.parent / "shared"
ARCHIVE = SHARED / "datasets" / "hymenoptera.tar.gz"
DEIT = SHARED / "models" / "deit-tiny-patch16-224-in1k.safetensors"
WORK = Path(tempfile.gettempdir()) / "vitkit-hymenoptera"

# One arm in its own process: the job through the library, then one JSON line with the result.
CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
from vitkit.notices import plain_warnings
plain_warnings()
start = time.perf_counter()
from vitkit.data.pipeline import DataConfig
from vitkit.training import RunConfig, TrainConfig, fit
data = DataConfig(dataset="folder", path=args["train"], val_path=args["val"], cache_dir=args["cache"],
                  resize=args["resize"])
if args["arm"] == "scratch":
    result = fit(TrainConfig(data=data, run=RunConfig(out=args["out"], progress=False, seed=args["seed"])))
else:
    from vitkit.finetune import finetune
    from vitkit.loading import LoadOptions
    result = finetune(args["weights"], data, run=RunConfig(out=args["out"], epochs=args["epochs"],
                      progress=False, seed=args["seed"]), mode=args["arm"],
                      options=LoadOptions(preprocess="deit"))
wall = time.perf_counter() - start
from pathlib import Path
from vitkit.loading import open_model
from vitkit.predict import predict_files
files = sorted(p for p in Path(args["val"]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
opened = open_model(args["out"])
predict_files(opened, files[:8])  # warm-up (and the ONNX route's export, where it runs)
t0 = time.perf_counter()
predict_files(opened, files)
predict_s = len(files) / (time.perf_counter() - t0)
print("RESULT " + json.dumps({"acc": result.val_acc, "epochs": result.epoch, "wall_s": wall,
      "predict_img_s": predict_s,
      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "train_images": result.train_images}), flush=True)
"""


def extract() -> Path:
    root = WORK / "hymenoptera"
    if not (root / "val").is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as t:
            t.extractall(WORK, filter="data")
    return root


def run_arm(arm: str, root: Path, epochs: int, resize: str = "squash", seed: int = 0) -> dict:
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = WORK / "runs" / f"{arm}-{resize}"
    shutil.rmtree(out, ignore_errors=True)
    args = dict(arm=arm, train=str(root / "train"), val=str(root / "val"), cache=str(cache), out=str(out),
                weights=str(DEIT), epochs=epochs, resize=resize, seed=seed)
    return run_child(CHILD, args, arm)


def run_child(code: str, args: dict, name: str) -> dict:
    """Run `code` in a fresh process with args as JSON; the dict its "RESULT " line holds."""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="scratch,linear,lora,full")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the lora and full arms")
    ap.add_argument("--resize", default="squash", help="comma-separated --data.resize modes for each arm")
    ap.add_argument("--seeds", default="0", help="comma-separated --run.seed values for each arm")
    a = ap.parse_args()
    for need in (ARCHIVE, DEIT):
        if not need.is_file():
            raise SystemExit(f"{need}: not found (the shared data and models sit beside the repository)")
    root = extract()
    print(f"CPU {cpu_name()}, native bf16: {native_bf16('cpu')}, AMX: {cpu_has_amx()}; hymenoptera: 245 "
          "training, 153 validation photos", flush=True)
    print("| arm | resize | seed | accuracy | epochs | wall s | peak MiB | predict img/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for arm in a.arms.split(","):
        name = "from scratch, every default" if arm == "scratch" else f"DeiT-Tiny, finetune --mode {arm}"
        for resize in a.resize.split(","):
            for seed in map(int, a.seeds.split(",")):
                r = run_arm(arm, root, a.epochs, resize, seed)
                print(f"| {name} | {resize} | {seed} | {r['acc']:.2%} | {r['epochs']} | {r['wall_s']:.1f} | "
                      f"{r['peak_mib']:.0f} | {r['predict_img_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
