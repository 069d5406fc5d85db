"""What a five-minute budget buys on real photos trained from scratch: more epochs, a larger
input, or a deeper model, at equal wall time.

    python benchmarks/photo_budget.py [--arms default,epochs,96px,128px] [--seeds 0] [--minutes 5]

Data: the shared hymenoptera photos (ants and bees; 245 training and 153 validation JPEGs of
mixed sizes and aspect ratios), extracted once under /tmp. Every arm is `vitkit train
--data.dataset folder --data.path train --data.val_path val` through the library's fit, with
nothing else set but what the arm names:

- default: every default (the planned run: the photo model at 64 px, the epochs rule's 60
  epochs, which end well inside the budget);
- epochs: the same model at 64 px, trained for as many epochs as the budget holds
  (--run.time_budget, the schedule following the clock);
- 96px / 128px: --data.image_size 96 / 128 (patch 8 / 16: a 12x12 / 8x8 grid), the budget too;
- deep: 64 px, 12 layers instead of 4 (--model.num_layers 12), the budget too;
- 96px-60 / 128px-60 / 128px-p8-60: the larger inputs (128 px also with patch 8, a 16x16
  grid) trained as the default is, for the epochs rule's 60 epochs, with no budget set;
- 64px-60: the default's model and epochs set explicitly; 96px-400: 96 px, patch 8, 400 epochs;
- d128-60 / d192-60: the default's input and 60 epochs with a wider, deeper model (D 128, 6
  layers / D 192, 6 layers).

Budget arms set --run.time_budget to 90% of the minutes, so that reading the photos and the
final evaluation fit in the rest. Each arm runs in its own process, one after the
other, with the decoded-image cache cleared first; wall time is the whole job. Accuracy is on
the 153 validation photos (one photo is 0.65 points). The CPU is named; compare arms of one
run only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hymenoptera_transfer import WORK, extract, run_child  # noqa: E402  (the same photos, extracted once)

from vitkit.precision import cpu_name  # noqa: E402

ARMS = {
    "default": {},
    # the photo default's model and length, set explicitly
    "64px-60": {"data": {"image_size": 64}, "model": {"patch_size": 8}, "run": {"epochs": 60}},
    # 96 px, patch 8 for 400 epochs: what planning photos to fill the budget (at most 400) trained
    "96px-400": {"data": {"image_size": 96}, "model": {"patch_size": 8}, "run": {"epochs": 400}},
    "epochs": {"run": {"epochs": 100_000}},
    "96px": {"data": {"image_size": 96}, "model": {"patch_size": 8}, "run": {"epochs": 100_000}},
    "128px": {"data": {"image_size": 128}, "model": {"patch_size": 16}, "run": {"epochs": 100_000}},
    "deep": {"model": {"num_layers": 12}, "run": {"epochs": 100_000}},
    # the same inputs planned as the default is (the epochs rule's 60 epochs, no budget set)
    "96px-60": {"data": {"image_size": 96}, "model": {"patch_size": 8}},
    "128px-60": {"data": {"image_size": 128}, "model": {"patch_size": 16}},
    "128px-p8-60": {"data": {"image_size": 128}, "model": {"patch_size": 8}},
    # the default input and length with a wider and deeper model
    "d128-60": {"model": {"hidden_size": 128, "num_layers": 6, "num_heads": 4, "mlp_size": 256},
                "run": {"epochs": 60}},
    "d192-60": {"model": {"hidden_size": 192, "num_layers": 6, "num_heads": 3, "mlp_size": 384},
                "run": {"epochs": 60}},
}

CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from vitkit.notices import plain_warnings
plain_warnings()
start = time.perf_counter()
from vitkit.training import TrainConfig, fit
d = {"data": {"dataset": "folder", "path": args["train"], "val_path": args["val"],
              "cache_dir": args["cache"]},
     "run": {"out": args["out"], "progress": False, "seed": args["seed"]}}
for section, values in args["arm"].items():
    d.setdefault(section, {}).update(values)
if d["run"].get("epochs") == 100_000:  # the budget arms: as many epochs as the clock allows
    d["run"]["time_budget"] = args["minutes"]
result = fit(TrainConfig.from_dict(d))
meta = json.loads(open(args["out"] + "/config.json").read())
wall = time.perf_counter() - start
print("RESULT " + json.dumps({"acc": result.val_acc, "epochs": result.epoch, "wall_s": wall,
      "size": meta["data"]["image_size"], "layers": meta["model"]["num_layers"], "plan": meta.get("plan")}),
      flush=True)
"""


def run_arm(name: str, root: Path, minutes: float, seed: int) -> dict:
    cache, out = WORK / "cache", WORK / "runs" / f"budget-{name}-{seed}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    args = dict(arm=ARMS[name], train=str(root / "train"), val=str(root / "val"), cache=str(cache),
                out=str(out), seed=seed, minutes=minutes)
    return run_child(CHILD, args, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="default,epochs,96px,128px")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--minutes", type=float, default=5.0)
    a = ap.parse_args()
    root = extract()
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for name in a.arms.split(","):
            r = run_arm(name, root, a.minutes * 0.9, seed)  # training and evaluation within the budget
            rows.append((name, seed, r))
            print(name, seed, json.dumps(r), flush=True)
    print(f"\nhymenoptera from scratch, {a.minutes:g} min budget ({cpu_name()})\n")
    print("| arm | seed | size | layers | epochs | wall s | val accuracy |\n|---|---|---|---|---|---|---|")
    for name, seed, r in rows:
        size = "x".join(str(v) for v in r["size"])
        print(f"| {name} | {seed} | {size} | {r['layers']} | {r['epochs']} | {r['wall_s']:.0f} | "
              f"{r['acc']:.2%} |")


if __name__ == "__main__":
    main()
