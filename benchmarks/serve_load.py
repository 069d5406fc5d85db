"""Load test of `vitkit serve` on loopback: C concurrent clients, throughput, latency, health.

    python benchmarks/serve_load.py [--models cifar s16] [--levels 1 4 16 64] [--out FILE]

For each model a real server is started (`python -m vitkit.cli serve`, default options,
access log off) and driven by C keep-alive connections, each sending raw-body JPEG uploads
to /v1/predict back to back, for a fixed number of requests per level. Meanwhile a separate
connection asks /health every 50 ms. Reported per level: images/s, p50/p99 latency, errors
(any answer but 200, or a broken connection), server restarts (the process exited, or
/health reports a new start time), and the slowest /health answer. Then, at 16 clients, the
same with --max_batch 1 (no batching), and finally the model called directly in this
process (same threads, precision and prepared images) on the batch sizes the server ran at
the highest level: the ceiling the server is measured against.

Models: "cifar" is the run at /tmp/vitkit-cifar/run when it exists, else an untrained model
of configs/cifar10.yaml's architecture (10 classes, 32x32); "s16" is vitkit.variant("S/16")
with random weights at 224x224. Images are CIFAR-10 test JPEGs (extracted from the shared
archive when missing), upscaled and re-encoded for S/16.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.checkpoint import save_pretrained  # noqa: E402
from vitkit.config import ViTConfig, variant  # noqa: E402
from vitkit.data.preprocess import InputSpec  # noqa: E402
from vitkit.model import ViT  # noqa: E402
from vitkit.precision import cpu_name  # noqa: E402

CIFAR = Path("/tmp/vitkit-cifar")
ARCHIVE = ROOT.parent / "shared/datasets/cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---- models and images ------------------------------------------------------------------------

def cifar_images(n: int) -> list[bytes]:
    test = CIFAR / "cifar10" / "test"
    if not test.is_dir():
        subprocess.run(["tar", "-xzf", str(ARCHIVE), "-C", str(CIFAR), "cifar10/test"], check=True)
    files = sorted(test.glob("*/*.jpg"))
    pick = np.random.default_rng(0).choice(len(files), size=min(n, len(files)), replace=False)
    return [files[i].read_bytes() for i in sorted(pick)]


def upscaled(blobs: list[bytes], size: int) -> list[bytes]:
    out = []
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            buf = io.BytesIO()
            im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def model_dir(name: str, work: Path) -> tuple[Path, str]:
    """A model directory to serve, and a description of it."""
    if name == "cifar":
        run = CIFAR / "run"
        if (run / "config.json").is_file():
            return run, "CIFAR-10 hybrid ViT, trained run"
        recipe = yaml.safe_load((ROOT / "configs" / "cifar10.yaml").read_text())["model"]
        cfg = ViTConfig(image_size=32, num_classes=10, **recipe)
        desc = "CIFAR-10 hybrid ViT (configs/cifar10.yaml), untrained"
        spec = InputSpec((32, 32), 3, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
        classes = CLASSES
    elif name == "s16":
        cfg, desc = variant("S/16", num_classes=1000), "S/16, random weights, 224x224"
        spec, classes = InputSpec((224, 224), 3, [0.5] * 3, [0.5] * 3), [f"class {i}" for i in range(1000)]
    else:
        raise SystemExit(f"unknown model {name!r}: cifar or s16")
    torch.manual_seed(0)
    out = work / name
    save_pretrained(ViT(cfg), out, extra={"classes": classes, "data": spec.to_dict()})
    return out, desc


# ---- the server -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, path: Path, *options: str):
        self.port = free_port()
        cmd = [sys.executable, "-m", "vitkit.cli", "serve", str(path), "--port", str(self.port),
               "--access_log", "false", *options]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"the server exited: {self.log.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the server did not start within 180 s") from None
                time.sleep(0.2)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


# ---- a small keep-alive HTTP/1.1 client (cheap, so the load generator leaves the CPU to the server)

class Connection:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "image/jpeg"
                      ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# A separate process asks /health every 50 ms over its own keep-alive connection until told to
# stop on stdin, then prints the latencies (s) and the start times it saw: its timings are not
# delayed by the load generator's own event loop.
PROBER = r"""
import http.client, json, select, sys, time
port = int(sys.argv[1])
conn, lat, starts = None, [], set()
while not select.select([sys.stdin], [], [], 0.05)[0]:
    t0 = time.perf_counter()
    try:
        conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/health")
        r = conn.getresponse()
        body = r.read()
        lat.append(time.perf_counter() - t0 if r.status == 200 else float("inf"))
        starts.add(json.loads(body)["started"])
    except (OSError, http.client.HTTPException, ValueError):
        lat.append(float("inf"))
        conn = None
print(json.dumps({"latencies": lat, "starts": sorted(starts)}))
"""


async def load_level(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def client() -> None:
        nonlocal issued, errors
        conn = Connection(port)
        while issued < requests:
            i = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request("POST", "/v1/predict?topk=5", images[i % len(images)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
                await conn.close()
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1
        await conn.close()

    probe = subprocess.Popen([sys.executable, "-c", PROBER, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    probed = json.loads(probe.communicate("stop\n", timeout=60)[0])
    starts = set(probed["starts"])
    lat = np.array(latencies) * 1000
    h = np.array(probed["latencies"]) * 1000
    return {"clients": clients, "requests": len(latencies), "images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "errors": errors, "health_checks": len(h), "health_max_ms": float(h.max()) if len(h) else None,
            "health_p99_ms": float(np.percentile(h, 99)) if len(h) else None, "starts": sorted(starts)}


async def get_json(port: int, path: str) -> dict:
    conn = Connection(port)
    status, body = await conn.request("GET", path)
    await conn.close()
    return json.loads(body)


def measure(server: Server, images: list[bytes], clients: int, requests: int, seen_starts: set) -> dict:
    """One load level against a running server, with the batches the server ran for it."""
    before = asyncio.run(get_json(server.port, "/v1/stats"))
    row = asyncio.run(load_level(server.port, images, clients, requests))
    after = asyncio.run(get_json(server.port, "/v1/stats"))
    seen_starts.update(row.pop("starts"))
    row["restarts"] = len(seen_starts) - 1 + (server.proc.poll() is not None)
    row["batches"] = after["batches"] - before["batches"]
    row["mean_batch"] = (after["items"] - before["items"]) / max(row["batches"], 1)
    row["batch_sizes"] = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()
                          if v - before["batch_sizes"].get(k, 0)}
    return row


def show(label: str, row: dict) -> None:
    r = row
    print(f"  {label:<14} C={r['clients']:<3} {r['images_per_s']:7.1f} img/s  p50 {r['p50_ms']:7.1f} ms  "
          f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  restarts {r['restarts']}  mean batch "
          f"{r['mean_batch']:4.1f}  /health p99 {r['health_p99_ms']:5.1f} max {r['health_max_ms']:5.1f} ms",
          flush=True)


# ---- the model called directly ----------------------------------------------------------------

class Direct:
    """The model alone, in this process: the server's own batch function (same precision, same
    prepared inputs) called on one worker thread as the server calls it, with no HTTP,
    decoding or batching around it."""

    def __init__(self, path: Path, images: list[bytes]):
        from vitkit.serve.inference import Engine
        from vitkit.serve.server import configure_threads, open_for_serving

        configure_threads()
        self.engine = Engine(open_for_serving(path))
        self.prepared = []
        for b in images[:64]:
            with Image.open(io.BytesIO(b)) as im:
                self.prepared.append(self.engine.prepare(im))
        self.worker = ThreadPoolExecutor(max_workers=1)
        self.run({"16": 2, "1": 2})  # warm-up

    def run(self, batch_sizes: dict[str, int]) -> float:
        """Images/s over exactly these batches (size -> count)."""
        images, t0 = 0, time.perf_counter()
        for size, count in batch_sizes.items():
            items = [self.prepared[i % len(self.prepared)] for i in range(int(size))]
            for _ in range(count):
                self.worker.submit(self.engine.run_batch, "predict", items).result()
                images += int(size)
        return images / (time.perf_counter() - t0)


# ---- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cifar", "s16"])
    ap.add_argument("--levels", nargs="+", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, nargs="+", default=None,
                    help="requests per level, one per model (default: cifar 1500, s16 128)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "serve_load_cpu.json")
    args = ap.parse_args()
    defaults = {"cifar": 1500, "s16": 128}
    requests = args.requests or [defaults.get(m, 500) for m in args.models]
    work = Path(tempfile.mkdtemp(prefix="vitkit-serve-bench-"))
    base = cifar_images(512)
    top_c = max(args.levels)
    report = {"cpu": cpu_name(), "torch": torch.__version__, "levels": args.levels, "models": {}}
    print(f"{report['cpu']}, torch {torch.__version__}, load average {os.getloadavg()}", flush=True)
    for name, n in zip(args.models, requests, strict=True):
        path, desc = model_dir(name, work)
        images = base if name == "cifar" else upscaled(base[:128], 224)
        print(f"{name}: {desc}; {n} requests per level, {len(images)} distinct JPEGs "
              f"(mean {np.mean([len(b) for b in images]) / 1024:.1f} KiB)", flush=True)
        server, single = Server(path), Server(path, "--max_batch", "1")
        direct = Direct(path, images)
        starts, single_starts = set(), set()
        for s in (server, single):
            asyncio.run(load_level(s.port, images, 4, 32))  # warm-up
        rows = [measure(server, images, c, n, starts) for c in args.levels]
        for row in rows:
            show("levels", row)
        # The comparisons alternate their two sides in rounds, so that drifts in the load of
        # this shared machine hit both sides alike; each round's ratio is kept, the median reported.
        batching, saturation = [], []
        m = max(n // 4, 2 * top_c)
        for _ in range(args.rounds):
            a = measure(server, images, 16, m, starts)
            b = measure(single, images, 16, m, single_starts)
            show("batched", a)
            show("--max_batch 1", b)
            batching.append({"batched": a, "max_batch_1": b, "ratio": a["images_per_s"] / b["images_per_s"]})
            c = measure(server, images, top_c, m, starts)
            d = direct.run(c["batch_sizes"])
            show("saturation", c)
            print(f"  {'direct':<18} same {c['batches']} batches: {d:7.1f} img/s -> server "
                  f"{c['images_per_s'] / d:.0%}", flush=True)
            saturation.append({"server": c, "direct_images_per_s": d, "ratio": c["images_per_s"] / d})
        codes = [server.stop(), single.stop()]
        summary = {"batching_x_at_16": float(np.median([r["ratio"] for r in batching])),
                   "server_vs_direct_at_saturation": float(np.median([r["ratio"] for r in saturation])),
                   "direct_images_per_s": float(np.median([r["direct_images_per_s"] for r in saturation])),
                   "errors": sum(r["errors"] for r in rows) + sum(
                       r[k]["errors"] for r in batching for k in ("batched", "max_batch_1")) + sum(
                       r["server"]["errors"] for r in saturation),
                   "restarts": len(starts) - 1 + len(single_starts) - 1,
                   "health_max_ms_at_top": max([rows[-1]["health_max_ms"]] + [
                       r["server"]["health_max_ms"] for r in saturation]),
                   "server_exit_codes": codes, "precision": direct.engine.precision,
                   "threads": torch.get_num_threads(), "load_average_after": os.getloadavg()}
        print(f"  summary: batching at C=16 {summary['batching_x_at_16']:.2f}x; server at C={top_c} "
              f"{summary['server_vs_direct_at_saturation']:.0%} of direct calls "
              f"({summary['direct_images_per_s']:.1f} img/s, {summary['precision']}); errors "
              f"{summary['errors']}, restarts {summary['restarts']}, /health max at C={top_c} "
              f"{summary['health_max_ms_at_top']:.1f} ms", flush=True)
        report["models"][name] = {"description": desc, "requests_per_level": n, "levels": rows,
                                  "batching_rounds": batching, "saturation_rounds": saturation,
                                  "summary": summary}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
