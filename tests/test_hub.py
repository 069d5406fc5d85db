"""Hub ids download through huggingface_hub from a stand-in Hub on 127.0.0.1 (HF_ENDPOINT):
only the files a model needs, into a fresh cache, opened with the same logits as the local
folder; a second open needs no server; offline refusals (flag or HF_HUB_OFFLINE) are one line."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch
from test_loading import randomize_all_

import vitkit
from vitkit.cli import main
from vitkit.loading import LoadOptions

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
CLASSES = ["cat", "dog", "fox"]


class StandInHub:
    """The part of the Hub's HTTP API that snapshot_download and model_info use: repository
    info by revision, the file tree, and HEAD/GET of /{repo}/resolve/{revision}/{file}."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def fetched(self) -> list[str]:
        """Files whose content was sent (GET of a resolve URL)."""
        return sorted(p.rsplit("/", 1)[1] for m, p in self.requests if m == "GET" and "/resolve/" in p)

    @staticmethod
    def blob_id(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def answer(self, h: BaseHTTPRequestHandler, body: bool):
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"] and len(parts) >= 4
        repo = "/".join(parts[2:4] if api else parts[:2])
        files = self.repos.get(repo)
        if files is None:
            return self.send(h, 404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        if api and (parts[4:] or ["revision"])[0] == "revision":
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
            return self.send_json(h, info, body)
        if api and parts[4] == "tree":
            return self.send_json(h, [{"type": "file", "path": n, "size": len(d), "oid": self.blob_id(d)}
                                      for n, d in files.items()], body)
        name = "/".join(parts[4:])
        if len(parts) < 5 or parts[2] != "resolve" or name not in files:
            return self.send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
        data = files[name]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self.blob_id(data)}"',
                   "Content-Type": "application/octet-stream"}
        return self.send(h, 200, data, headers, body)

    def send_json(self, h, obj, body: bool):
        return self.send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def send(h, status: int, data: bytes, headers: dict, body: bool):
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """A transformers ViT with its preprocessor settings (beside a pickle copy of its weights,
    which must never be fetched) and a timm ViT, as their libraries save them."""
    root = tmp_path_factory.mktemp("repos")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                 num_attention_heads=3, intermediate_size=96, num_labels=3,
                                 id2label=dict(enumerate(CLASSES)),
                                 label2id={name: i for i, name in enumerate(CLASSES)})
    hf = randomize_all_(transformers.ViTForImageClassification(cfg))
    hf.save_pretrained(root / "hf")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN,
                                   image_std=STD).save_pretrained(root / "hf")
    files = folder_files(root / "hf")
    files["pytorch_model.bin"] = b"not to be read"
    files["README.md"] = b"# tiny"
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    tm = randomize_all_(tm)
    from timm.models._hub import save_for_hf

    save_for_hf(tm, str(root / "timm"), safe_serialization=True)
    return {"hf": (root / "hf", hf, files), "timm": (root / "timm", tm, folder_files(root / "timm"))}


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    server = StandInHub({"someuser/tiny-vit": repos["hf"][2], "someuser/tiny-timm": repos["timm"][2]})
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # read by vitkit.hub when a download starts
    monkeypatch.setattr(c, "ENDPOINT", server.url)  # and wherever huggingface_hub reads it itself
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(c, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"), raising=False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.stop()


def logits(model, seed=0):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_download_then_cache_without_server(hub, repos, tmp_path, monkeypatch):
    local, hf, _ = repos["hf"]
    opened = vitkit.open_model("someuser/tiny-vit")
    assert hub.fetched() == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert any(p == "/api/models/someuser/tiny-vit/revision/main" for _, p in hub.requests)
    expected = logits(vitkit.open_model(local).model)
    torch.testing.assert_close(logits(opened.model), expected, rtol=0, atol=1e-5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(expected, hf(pixel_values=x).logits.detach(), rtol=0, atol=1e-5)
    assert opened.classes == CLASSES and opened.spec.mean == pytest.approx(MEAN)
    snapshot = tmp_path / "hf-cache" / "models--someuser--tiny-vit" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / "pytorch_model.bin").exists()

    hub.stop()  # the second open reads the cache alone, online or offline
    n = len(hub.requests)
    torch.testing.assert_close(logits(vitkit.open_model("someuser/tiny-vit").model), expected, rtol=0, atol=0)
    again = vitkit.open_model("someuser/tiny-vit", LoadOptions(offline=True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.testing.assert_close(logits(again.model), expected, rtol=0, atol=0)
    assert vitkit.open_model("someuser/tiny-vit").classes == CLASSES
    assert len(hub.requests) == n


def test_timm_repository(hub, repos):
    local, tm, _ = repos["timm"]
    opened = vitkit.open_model("someuser/tiny-timm", LoadOptions(classes=["a", "b", "c"]))
    assert hub.fetched() == ["config.json", "model.safetensors"]
    assert opened.model.config.num_heads == 3 and opened.spec.mean == list(tm.pretrained_cfg["mean"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(opened.model(x), tm(x), rtol=0, atol=1e-5)


def one_line_cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vitkit: error: ")
    return err


def test_offline_refusals_are_one_line(hub, capsys, monkeypatch):
    err = one_line_cli_error(capsys, "predict", "someuser/tiny-vit", "x.png", "--load.offline", "true")
    assert "--load.offline" in err and "hf download someuser/tiny-vit" in err and "cache" in err
    with pytest.raises(FileNotFoundError, match="--load.offline is set"):
        vitkit.open_model("someuser/tiny-vit", LoadOptions(offline=True))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_cli_error(capsys, "predict", "someuser/tiny-vit", "x.png")
    assert "HF_HUB_OFFLINE is set" in err and "hf download someuser/tiny-vit" in err
    assert hub.requests == []  # nothing was asked of the Hub


def test_download_failures_are_one_line(hub, capsys):
    err = one_line_cli_error(capsys, "predict", "someuser/not-there", "x.png")
    assert "no such model repository" in err and hub.url in err
    hub.repos["someuser/no-weights"] = {"config.json": b"{}", "README.md": b"# none"}
    err = one_line_cli_error(capsys, "predict", "someuser/no-weights", "x.png")
    assert "no model.safetensors or pytorch_model.bin" in err and "README.md" in err
    hub.stop()
    err = one_line_cli_error(capsys, "predict", "someuser/tiny-vit", "x.png")
    assert "cannot download" in err and "--load.offline" in err


def test_predict_json_is_pure_while_downloading(hub, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    main(["predict", "someuser/tiny-vit", str(img), "--json", "true", "--precision", "fp32"])
    out, err = capsys.readouterr()
    assert hub.fetched()  # it was a download, and it said so on stderr
    assert "downloading someuser/tiny-vit" in err and "downloading" not in out
    res = json.loads(out)
    assert res[0]["file"] == str(img) and res[0]["top"][0]["class"] in CLASSES
