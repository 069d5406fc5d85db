"""vitkit serve: the HTTP API in process (TestClient), hostile uploads, and the real server."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.checkpoint import save_pretrained  # noqa: E402
from vitkit.config import ViTConfig  # noqa: E402
from vitkit.data.preprocess import InputSpec  # noqa: E402
from vitkit.loading import OpenedModel  # noqa: E402
from vitkit.model import ViT  # noqa: E402
from vitkit.predict import predict_files  # noqa: E402
from vitkit.serve import ServeOptions, create_app  # noqa: E402

pytestmark = pytest.mark.precision  # make test runs these again as on the other kind of CPU

CLASSES = ["cat", "dog", "bird"]
SPEC = InputSpec((32, 32), 3, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                    num_classes=3)
    return randomize_(ViT(cfg).eval(), seed=1)


def opened(model=None) -> OpenedModel:
    return OpenedModel(model or tiny_vit(), CLASSES, SPEC, report=None, source="memory", name="tiny")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(48, 40), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def as_jpeg(client, data: bytes, path: str = "/v1/predict", headers: dict | None = None, **kw):
    return client.post(path, content=data, headers={"content-type": "image/jpeg", **(headers or {})}, **kw)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(opened(), ServeOptions(max_batch=8, max_wait_ms=2, max_bytes=1 << 20))) as c:
        yield c


def assert_alive(client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    r = as_jpeg(client, encode(photo(), "JPEG"))
    assert r.status_code == 200, r.text


# ---- endpoints ------------------------------------------------------------------------------

def test_health_and_page(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<input id="file" name="file" type="file"' in html and '<label for="file">' in html
    assert 'aria-live="polite"' in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    assert "connect-src 'self'" in page.headers["content-security-policy"]


def test_predict_matches_vitkit_predict(client, tmp_path):
    img = photo((50, 37))
    path = tmp_path / "x.png"
    img.save(path)
    data = path.read_bytes()
    expected = predict_files(opened(), [path], topk=3, precision="auto")[0]["top"]
    multipart = client.post("/v1/predict?topk=3", files={"file": ("x.png", data, "image/png")})
    raw = client.post("/v1/predict?topk=3", content=data, headers={"content-type": "image/png"})
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["image"] == {"width": 50, "height": 37, "mode": "RGB",
                                                             "format": "PNG"}
        assert [t["class"] for t in body["top"]] == [t["class"] for t in expected]
        np.testing.assert_allclose([t["probability"] for t in body["top"]],
                                   [t["probability"] for t in expected], atol=2e-6)
        assert body["time_ms"] > 0


def test_topk(client):
    data = encode(photo(), "JPEG")
    assert len(as_jpeg(client, data).json()["top"]) == 3  # default 5, clamped to the 3 classes
    one = as_jpeg(client, data, params={"topk": 1}).json()["top"]
    assert len(one) == 1 and one[0]["class"] in CLASSES
    probs = [t["probability"] for t in as_jpeg(client, data, params={"topk": 3}).json()["top"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    for bad in ("0", "-1", "many"):
        r = as_jpeg(client, data, params={"topk": bad})
        assert r.status_code == 422 and "topk" in r.json()["error"]


def test_explain_json_and_png(client):
    from vitkit.visualize.analysis import attention_rollout, capture_attention, readout

    img = photo((64, 64), seed=3)
    data = encode(img, "PNG")
    r = client.post("/v1/explain", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["top"]) == 3 and body["image"]["width"] == 64
    png = base64.b64decode(body["overlay"]["png_base64"])
    with Image.open(io.BytesIO(png)) as overlay:
        assert overlay.format == "PNG"
        assert overlay.size == (body["overlay"]["width"], body["overlay"]["height"])
        assert min(overlay.size) >= 224
    # the same rollout vitkit visualize computes, and the same probabilities as /v1/predict
    engine = client.app.state.engine
    x = engine.prepare(img).tensor[None]
    maps = readout(attention_rollout(capture_attention(engine.model, x)), (4, 4))
    np.testing.assert_allclose(engine.rollout(capture_attention(engine.model, x), (32, 32)), maps)
    predicted = client.post("/v1/predict", content=data, headers={"content-type": "image/png"}).json()
    assert predicted["top"] == body["top"]

    as_png = client.post("/v1/explain", content=data, headers={"content-type": "image/png",
                                                                "accept": "image/png"})
    assert as_png.status_code == 200 and as_png.headers["content-type"] == "image/png"
    assert as_png.content.startswith(b"\x89PNG") and as_png.headers["x-top-class"] == body["top"][0]["class"]
    query = client.post("/v1/explain?format=png", files={"file": ("x.png", data, "image/png")})
    assert query.headers["content-type"] == "image/png"


class NoAttention(torch.nn.Module):
    """Stands in for an exported ONNX model: forward and predict_proba, no parameters."""

    def __init__(self, model: ViT):
        super().__init__()
        self._run = model.predict_proba

    def forward(self, x):
        return self._run(x).log()

    def predict_proba(self, x):
        return self._run(x)


def test_explain_refused_for_a_model_without_attention_capture():
    with TestClient(create_app(opened(NoAttention(tiny_vit())))) as c:
        data = encode(photo(), "JPEG")
        r = as_jpeg(c, data, "/v1/explain")
        assert r.status_code == 400 and "attention capture" in r.json()["error"]
        assert as_jpeg(c, data).status_code == 200
        info = c.get("/v1/model").json()
        assert info["explain"] is False and info["parameters"] == 0


def test_model_info(client):
    info = client.get("/v1/model").json()
    model = tiny_vit()
    assert info["parameters"] == model.num_params() and info["classes"] == CLASSES
    assert info["architecture"] == model.config.to_dict() and info["input"] == SPEC.to_dict()
    assert info["explain"] is True and info["server"]["max_batch"] == 8 and "api_key" not in info["server"]
    stats = client.get("/v1/stats").json()
    assert stats["batches"] >= 1 and stats["pending"] == 0


def test_errors_are_json(client):
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"error": "not found: GET /nowhere"}
    r = client.get("/v1/predict")
    assert r.status_code == 405 and "POST" in r.json()["error"] and r.headers["allow"] == "POST"
    r = client.delete("/health")
    assert r.status_code == 405 and "error" in r.json()


# ---- batching -------------------------------------------------------------------------------

def test_concurrent_requests_share_forward_passes(tmp_path):
    model = tiny_vit()
    calls: list[int] = []
    run = model.predict_proba

    def counting(x):
        calls.append(len(x))
        return run(x)

    model.predict_proba = counting
    # engine torch: the counted forward is the module's (in fp32 "auto" would run its ONNX graph)
    app = create_app(opened(model), ServeOptions(max_batch=8, max_wait_ms=1000, engine="torch"))
    images = [encode(photo(seed=i), "JPEG") for i in range(8)]
    with TestClient(app) as c, ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda d: as_jpeg(c, d), images))
        elapsed = time.perf_counter() - t0
        stats = c.get("/v1/stats").json()
    assert all(r.status_code == 200 for r in results)
    assert sum(calls) == 8 and len(calls) < 8, calls
    assert stats["batches"] == len(calls) and stats["items"] == 8
    assert elapsed < 30
    # each answer is the one for its own image
    files = []
    for i, data in enumerate(images):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(data)
    solo = predict_files(opened(), files, topk=3)
    for r, expected in zip(results, solo, strict=True):
        assert [t["class"] for t in r.json()["top"]] == [t["class"] for t in expected["top"]]


def test_batcher_waits_at_most_max_wait():
    import asyncio

    from vitkit.serve.batching import Batcher

    sizes: list[int] = []

    def run(kind, items):
        sizes.append(len(items))
        return [(kind, i * 2) for i in items]

    async def main():
        b = Batcher(run, max_batch=4, max_wait=0.05)
        await b.start()
        t0 = time.perf_counter()
        first = await b.submit("predict", 1)  # alone: runs after max_wait
        waited = time.perf_counter() - t0
        many = await asyncio.gather(*(b.submit("predict", i) for i in range(10)))
        mixed = await asyncio.gather(b.submit("predict", 5), b.submit("explain", 6))
        await b.close()
        return first, waited, many, mixed

    first, waited, many, mixed = asyncio.run(main())
    assert first == ("predict", 2) and 0.04 <= waited < 1.0
    assert many == [("predict", 2 * i) for i in range(10)] and sizes[1:4] == [4, 4, 2]
    assert mixed == [("predict", 10), ("explain", 12)]


# ---- API key --------------------------------------------------------------------------------

def test_api_key(monkeypatch):
    data = encode(photo(), "JPEG")
    with TestClient(create_app(opened(), ServeOptions(api_key="s3cret"))) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        for path in ("/v1/model", "/v1/stats"):
            r = c.get(path)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert as_jpeg(c, data).status_code == 401
        assert as_jpeg(c, data, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert as_jpeg(c, data, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert as_jpeg(c, data, headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"x-api-key": "s3cret"}).status_code == 200
    monkeypatch.setenv("VITKIT_API_KEY", "from-env")
    with TestClient(create_app(opened())) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"authorization": "Bearer from-env"}).status_code == 200


# ---- hostile and odd uploads ----------------------------------------------------------------

def test_zero_bytes_is_422(client):
    for r in (as_jpeg(client, b""), client.post("/v1/predict", files={"file": ("x.jpg", b"", "image/jpeg")})):
        assert r.status_code == 422 and "empty" in r.json()["error"]
    assert_alive(client)


def test_text_named_jpg_is_415(client):
    r = client.post("/v1/predict", files={"file": ("cat.jpg", b"this is not an image\n" * 20, "image/jpeg")})
    assert r.status_code == 415 and "not an image" in r.json()["error"]
    r = client.post("/v1/predict", content=b'{"a": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 415 and "content type" in r.json()["error"]
    assert_alive(client)


def test_truncated_jpeg_is_422(client):
    data = encode(photo((128, 128), seed=5), "JPEG", quality=95)
    r = as_jpeg(client, data[: len(data) // 2])
    assert r.status_code == 422 and "truncated" in r.json()["error"]
    assert_alive(client)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_413(client, monkeypatch):
    bomb = png_header_only(60000, 60000)
    assert len(bomb) < 200
    r = client.post("/v1/predict", content=bomb, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "pixels" in r.json()["error"]
    # just over the server's own limit (below PIL's error threshold of twice the limit)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    app = create_app(opened(), ServeOptions(max_pixels=10_000))
    with TestClient(app) as c:
        r = c.post("/v1/explain", content=png_header_only(101, 100), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "10,000" in r.json()["error"]
        assert c.post("/v1/predict", content=encode(photo((100, 100)), "PNG"),
                      headers={"content-type": "image/png"}).status_code == 200
    assert_alive(client)


def test_body_over_max_bytes_is_413(client):
    big = os.urandom(int(2.5 * (1 << 20)))
    r = client.post("/v1/predict", files={"file": ("big.jpg", big, "image/jpeg")})  # Content-Length known
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunked():  # no Content-Length: the streamed read is capped
        for i in range(0, len(big), 256 * 1024):
            yield big[i:i + 256 * 1024]

    r = client.post("/v1/predict", content=chunked(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert_alive(client)


def test_huge_content_length_refused_before_reading(client):
    sent = []

    def body():
        for _ in range(100):
            sent.append(1)
            yield b"\0" * (1 << 20)

    r = client.post("/v1/predict", content=body(),
                    headers={"content-type": "image/jpeg", "content-length": str(100 << 20)})
    assert r.status_code == 413 and "104,857,600" in r.json()["error"]
    assert len(sent) == 0  # not one chunk of the body was read
    assert_alive(client)


def test_wrong_field_name_is_422(client):
    r = client.post("/v1/predict", files={"image": ("x.jpg", encode(photo(), "JPEG"), "image/jpeg")})
    assert r.status_code == 422 and "'file'" in r.json()["error"] and "'image'" in r.json()["error"]
    assert_alive(client)


def _predict_image(client, img: Image.Image) -> list:
    return client.post("/v1/predict", content=encode(img.convert("RGB"), "PNG"),
                       headers={"content-type": "image/png"}).json()["top"]


def test_cmyk_jpeg(client):
    img = photo((40, 40), seed=7).convert("CMYK")
    data = encode(img, "JPEG", quality=100)
    r = client.post("/v1/predict", files={"file": ("cmyk.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["mode"] == "CMYK" and len(r.json()["top"]) == 3


def test_16_bit_png(client):
    arr = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    r = client.post("/v1/predict", content=encode(img, "PNG"), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["mode"].startswith("I")


def test_palette_and_rgba_png(client):
    for img in (photo().convert("P"), photo().convert("RGBA")):
        r = client.post("/v1/explain", content=encode(img, "PNG"), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["image"]["mode"] == img.mode


def test_animated_gif_uses_first_frame(client):
    colours = ((250, 20, 20), (20, 20, 250), (20, 250, 20))
    frames = [Image.new("RGB", (32, 32), c).convert("P") for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r = client.post("/v1/predict", files={"file": ("anim.gif", buf.getvalue(), "image/gif")})
    assert r.status_code == 200, r.text
    assert r.json()["top"] == _predict_image(client, frames[0].convert("RGB"))


# ---- the real server ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_predicts_refuses_and_stops_cleanly(tmp_path):
    model_dir = save_pretrained(tiny_vit(), tmp_path / "model",
                                extra={"classes": CLASSES, "data": SPEC.to_dict()})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vitkit.cli", "serve", str(model_dir), "--port", str(port),
           "--max_wait_ms", "1500", "--max_bytes", str(1 << 20), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not come up within 90 s"
            time.sleep(0.2)

        data = encode(photo(), "JPEG")
        with httpx.Client(base_url=base, timeout=30) as c:
            r = c.post("/v1/predict", files={"file": ("x.jpg", data, "image/jpeg")})
            assert r.status_code == 200 and r.json()["model"] == "model"
            assert c.get("/v1/model").json()["classes"] == CLASSES

        # a 100 MB Content-Length is answered at once, without the server waiting for the body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 104857600\r\n\r\n" + b"\0" * 65536)
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]

        # SIGTERM while a request waits in the batcher: it is answered, then the process exits 0
        result = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{base}/v1/predict", content=data, headers={"content-type": "image/jpeg"}, timeout=30)))
        t.start()
        while httpx.get(f"{base}/v1/stats", timeout=5).json()["pending"] == 0:
            assert t.is_alive() and time.time() < deadline + 30
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert result["r"].status_code == 200, result["r"].text
        assert proc.wait(30) == 0
        log = proc.stdout.read()
        assert "stopped by SIGTERM" in log and "Traceback" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_only_loopback_counts_as_local():
    from vitkit.serve.server import is_local

    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1")
    assert not is_local("0.0.0.0") and not is_local("::") and not is_local("192.0.2.7")
