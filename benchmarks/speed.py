"""vitkit against timm and Hugging Face transformers on identical architectures, in one run.

    python benchmarks/speed.py [--device cpu|cuda] [--repeats 5] [--only infer|train] [--json out.json]

The same as `vitkit bench`; the code is vitkit.bench.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.bench import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=["infer", "train"], default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the training peak-memory probes")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/speed.json"))
    args = ap.parse_args()
    run(args.device, args.repeats, args.only, not args.no_memory, args.json)


if __name__ == "__main__":
    main()
