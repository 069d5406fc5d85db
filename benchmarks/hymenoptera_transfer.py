"""Real photos, few of them: training from scratch against fine-tuning a pre-trained ViT.

    python benchmarks/hymenoptera_transfer.py [--arms scratch,linear,lora,full] [--epochs 10]

Data: the shared hymenoptera photos (ants and bees; 245 training and 153 validation JPEGs of
mixed sizes and aspect ratios, one unreadable GIF), extracted once under /tmp. Teacher of every
fine-tuning arm: the shared ImageNet-1k DeiT-Tiny (a bare timm-layout .safetensors file) opened
with `--load.preprocess deit` (ImageNet mean/std, bicubic, crop 0.875).

- scratch: `vitkit train --data.dataset folder --data.path train --data.val_path val`, every
  default (the photo model, epochs and augmentation vitkit picks for the data);
- linear / lora / full: `vitkit finetune DEIT --mode ...` with the fine-tuning defaults
  (--epochs for lora and full; the linear head trains on features computed once).

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
data = DataConfig(dataset="folder", path=args["train"], val_path=args["val"], cache_dir=args["cache"])
if args["arm"] == "scratch":
    result = fit(TrainConfig(data=data, run=RunConfig(out=args["out"], progress=False)))
else:
    from vitkit.finetune import finetune
    from vitkit.loading import LoadOptions
    result = finetune(args["weights"], data, run=RunConfig(out=args["out"], epochs=args["epochs"],
                      progress=False), mode=args["arm"], options=LoadOptions(preprocess="deit"))
wall = time.perf_counter() - start
print("RESULT " + json.dumps({"acc": result.val_acc, "epochs": result.epoch, "wall_s": wall,
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


def run_arm(arm: str, root: Path, epochs: int) -> dict:
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = WORK / "runs" / arm
    shutil.rmtree(out, ignore_errors=True)
    args = dict(arm=arm, train=str(root / "train"), val=str(root / "val"), cache=str(cache), out=str(out),
                weights=str(DEIT), epochs=epochs)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise SystemExit(f"{arm} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="scratch,linear,lora,full")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the lora and full arms")
    a = ap.parse_args()
    for need in (ARCHIVE, DEIT):
        if not need.is_file():
            raise SystemExit(f"{need}: not found (the shared data and models sit beside the repository)")
    root = extract()
    print(f"CPU {cpu_name()}, native bf16: {native_bf16('cpu')}, AMX: {cpu_has_amx()}; hymenoptera: 245 "
          "training, 153 validation photos", flush=True)
    print("| arm | accuracy | epochs | wall s | peak MiB |")
    print("|---|---:|---:|---:|---:|", flush=True)
    for arm in a.arms.split(","):
        r = run_arm(arm, root, a.epochs)
        name = "from scratch, every default" if arm == "scratch" else f"DeiT-Tiny, finetune --mode {arm}"
        print(f"| {name} | {r['acc']:.2%} | {r['epochs']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
