"""The page at / in a real browser: Debian's Chromium driven by Playwright, offline.

The model is a small random ViT; VITKIT_SERVE_MODEL=RUN_DIR and VITKIT_SERVE_IMAGE=FILE serve
a trained one instead, and VITKIT_SERVE_SCREENSHOT=docs/serve.png writes the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def ensure_chromium() -> str:
    """Debian's chromium package; installed with apt-get when missing (browsers are never downloaded
    by Playwright: this machine may have no internet)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=True,
                       env=env, timeout=1200, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()[-1:]
        pytest.skip(f"installing Debian's chromium with apt-get failed: {out or e}")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"apt-get install chromium did not provide {CHROMIUM}")
    return CHROMIUM


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The model to serve and an image file to show it."""
    from vitkit.config import ViTConfig
    from vitkit.data.preprocess import InputSpec
    from vitkit.loading import OpenedModel
    from vitkit.model import ViT
    from vitkit.serve.server import open_for_serving

    if os.environ.get("VITKIT_SERVE_MODEL"):
        return open_for_serving(os.environ["VITKIT_SERVE_MODEL"]), Path(os.environ["VITKIT_SERVE_IMAGE"])
    torch.manual_seed(0)
    model = randomize_(ViT(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2,
                                     mlp_size=64, num_classes=10)).eval(), seed=2)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    image = tmp_path_factory.mktemp("serve-browser") / "image.png"
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.stack([xx * 2.5, yy * 2.5, 255 - (xx + yy) * 1.3], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(image)
    spec = InputSpec((32, 32), 3, [0.5] * 3, [0.5] * 3)
    return OpenedModel(model, classes, spec, report=None, source="memory", name="tiny ViT"), image


def expected_top(url: str, image: Path, key: str | None = None) -> str:
    headers = {"content-type": "image/png", **({"x-api-key": key} if key else {})}
    r = httpx.post(f"{url}/v1/predict", content=image.read_bytes(), headers=headers, timeout=30)
    return r.json()["top"][0]["class"]


@pytest.fixture(scope="module")
def browser():
    path = ensure_chromium()
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=ARGS)
        yield b
        b.close()


def open_page(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    return page, errors, requests


def test_page_shows_top_classes_and_overlay(browser, served, tmp_path):
    from vitkit.serve import ServeOptions, create_app

    opened, digit = served
    with ServerThread(create_app(opened, ServeOptions(max_wait_ms=1))) as url:
        label = expected_top(url, digit)
        page, errors, requests = open_page(browser, url + "/", 1000)
        playwright_api.expect(page.locator("#model")).to_contain_text(f"{len(opened.classes)} classes")
        page.keyboard.press("Tab")  # the file input is reachable from the keyboard, first
        assert page.evaluate("document.activeElement.id") == "file"
        page.set_input_files("#file", str(digit))
        playwright_api.expect(page.locator("#results")).to_be_visible(timeout=30_000)
        top = page.locator("#top li")
        playwright_api.expect(top).to_have_count(5)
        assert top.first.locator(".name span").first.inner_text() == label
        playwright_api.expect(page.locator("#status")).to_contain_text(f"Top class: {label}")
        page.wait_for_function("document.getElementById('overlay-img').naturalWidth > 0")
        assert page.locator("#overlay-img").get_attribute("src").startswith("data:image/png;base64,")
        assert page.locator("#overlay-fig").is_visible()
        shot = os.environ.get("VITKIT_SERVE_SCREENSHOT")
        page.screenshot(path=shot or str(tmp_path / "serve.png"), full_page=True)

        # phone width: no horizontal scrolling, results still there
        phone, phone_errors, _ = open_page(browser, url + "/", 375)
        phone.set_input_files("#file", str(digit))
        playwright_api.expect(phone.locator("#results")).to_be_visible(timeout=30_000)
        phone.wait_for_function("document.getElementById('overlay-img').naturalWidth > 0")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        assert phone.evaluate("document.body.scrollWidth") <= 375
    assert errors == [] and phone_errors == []
    assert all(r.startswith(url) or r.startswith(("data:", "blob:")) for r in requests), requests


def test_page_sends_the_api_key(browser, served):
    from vitkit.serve import ServeOptions, create_app

    opened, digit = served
    with ServerThread(create_app(opened, ServeOptions(api_key="k3y", max_wait_ms=1))) as url:
        label = expected_top(url, digit, "k3y")
        page, _, _ = open_page(browser, url + "/", 800)
        playwright_api.expect(page.locator("#model")).to_contain_text("needs an API key")
        page.set_input_files("#file", str(digit))
        playwright_api.expect(page.locator("#error")).to_contain_text("API key")
        page.fill("#key", "k3y")
        page.click("#savekey")
        playwright_api.expect(page.locator("#model")).to_contain_text("classes")
        page.set_input_files("#file", str(digit))
        playwright_api.expect(page.locator("#status")).to_contain_text(f"Top class: {label}")
