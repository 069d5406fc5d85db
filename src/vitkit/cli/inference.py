"""The commands that run a model on images: evaluate, predict, visualize, serve, bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from ..data.pipeline import DataConfig
from ..loading import LoadOptions
from .support import json_mode, print_json, print_lines


def evaluate(weights: str, data: DataConfig | None = None, out: str | None = None, batch_size: int = 500,
             precision: Literal["auto", "fp32", "bf16"] = "auto", load: LoadOptions = LoadOptions(),
             engine: Literal["auto", "torch", "onnx", "openvino"] = "auto", json: bool = False,
             flip: bool = False) -> None:
    """Top-1 / top-5 and per-class accuracy, and a confusion matrix (PNG and CSV).

    Reads WEIGHTS and the data; prints the accuracies and writes confusion.png, confusion.csv
    and eval.json. A multi-label model gets mAP, micro and macro F1 at its stored threshold and
    per-tag AP instead (eval.json alone). Example: vitkit evaluate runs/digits --out eval/

    Args:
        weights: a run or model folder, another library's checkpoint or folder, an exported
            .onnx file, or a Hub id.
        data: the data to evaluate on, all of it (a folder: every image in it); default: the
            validation split the run was trained with.
        out: where to write confusion.png / confusion.csv / eval.json (default: the run directory).
        batch_size: images per forward pass.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        load: what the checkpoint may not record (heads, classes, normalization).
        engine: what runs fp32 inference on a CPU: auto (the model's ONNX graph where it pays:
            cached, or enough images to repay exporting it; by ONNX Runtime, or OpenVINO where
            installed and timed faster here), torch, onnx (ONNX Runtime) or openvino.
        json: print eval.json's summary alone on stdout instead of the table.
        flip: answer each image with the mean logits of it and its mirror image (test-time
            augmentation: twice the work; about a point on CIFAR-10).
    """
    from ..evaluation import evaluate_path, summary_lines

    with json_mode(json):
        done = evaluate_path(weights, data, out, batch_size, precision, load, engine=engine, flip=flip)
    print_json(done.to_json()) if json else print_lines(summary_lines(done))


def predict(weights: str, images: list[str], topk: int = 5, json: bool = False,
            precision: Literal["auto", "fp32", "bf16"] = "auto", load: LoadOptions = LoadOptions(),
            engine: Literal["auto", "torch", "onnx", "openvino"] = "auto", flip: bool = False) -> None:
    """Top-k classes with probabilities for image files or directories of images.

    Prints one line per image (or JSON); unreadable files are named on stderr, and the command
    fails when none could be read. A multi-label model lists every tag whose sigmoid probability
    is at or over its stored threshold ("labels" in JSON). Example: vitkit predict runs/digits
    photo.png more/ --topk 3

    Args:
        weights: a run or model folder, another library's checkpoint or folder, an exported
            .onnx file, or a Hub id.
        images: image files and/or directories.
        topk: how many classes to show per image.
        json: print JSON (alone on stdout; unreadable files are named on stderr) instead of a table.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        load: what the checkpoint may not record (heads, classes, normalization).
        engine: what runs fp32 inference on a CPU: auto (the model's ONNX graph where it pays:
            cached, or enough images to repay exporting it; by ONNX Runtime, or OpenVINO where
            installed and timed faster here), torch, onnx (ONNX Runtime) or openvino.
        flip: answer each image with the mean logits of it and its mirror image (twice the work).
    """
    from ..predict import predict_paths, report_unreadable, result_lines

    with json_mode(json):
        results = predict_paths(weights, images, topk, precision, load, engine, flip)
    print_json(results) if json else print_lines(result_lines(results))
    report_unreadable(results, lambda message: print(f"vitkit: warning: {message}", file=sys.stderr))


def visualize(path: str, images: list[str] | None = None, out: str = "figures", data: str | None = None,
              num_samples: int = 16, max_images: int = 4, seed: int = 0, device: str = "cpu",
              load: LoadOptions = LoadOptions()) -> None:
    """Attention maps, attention rollout and the paper's Figure 6 and 7 plots, plus report.html.

    Usage: vitkit visualize RUN_OR_WEIGHTS [IMAGES ...] --out DIR (options after the files).

    Reads the model and images; writes PNG figures and report.html to --out.
    Example: vitkit visualize runs/digits --data digits --out runs/digits/figures

    Args:
        path: a run or model folder, another library's checkpoint or folder, or a Hub id.
        images: image files to look at; without them, a sample of --data, else random noise.
        out: directory for the PNG figures and report.html.
        data: an image folder to sample from when no images are given, or "digits" for the
            built-in digits set.
        num_samples: how many images to sample from --data (or of noise) for attention distance.
        max_images: how many images get attention and rollout figures.
        seed: seed for sampling images and for noise.
        device: where the model runs (cpu, cuda, ...).
        load: what the checkpoint may not record (heads, classes, normalization).
    """
    from ..visualize import visualize_path

    print_lines(visualize_path(path, out, images, data, num_samples, max_images, seed, device, load).lines())


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          max_wait_ms: float = 5.0, max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 40_000_000,
          api_key: str | None = None, threads: int | None = None, precision: str = "auto",
          access_log: bool = True, engine: Literal["auto", "torch", "onnx", "openvino"] = "auto") -> None:
    """Serve a model over HTTP: a JSON API and a web page that shows what the model sees.

    POST /v1/predict and /v1/explain (top classes; attention rollout), GET /v1/model, /health,
    and the page at /. Usage: vitkit serve MODEL [--port 8000]; needs the serve extra
    (pip install 'vitkit[serve]'). Stop with Ctrl-C or SIGTERM: requests in flight are finished.

    Example: vitkit serve runs/digits --port 8080

    Args:
        model: a run directory, a vitkit model directory, another library's checkpoint, or
            an exported .onnx file.
        host: address to listen on; anything but a loopback address without an API key prints
            a warning.
        port: TCP port.
        max_batch: most images per forward pass; concurrent requests are batched.
        max_wait_ms: longest a request waits for others to share its forward pass.
        max_bytes: largest request body; larger ones get 413 before they are read.
        max_pixels: largest image (width x height); larger ones get 413 (decompression bombs).
        api_key: require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on /v1/* (default:
            the VITKIT_API_KEY environment variable; none: no key needed).
        threads: torch intra-op threads (default: the cores available to this process).
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        access_log: log one line per request.
        engine: what runs fp32 inference on a CPU: auto (the model's ONNX graph, exported once
            and cached, by ONNX Runtime, or OpenVINO where installed and timed faster here),
            torch, onnx (ONNX Runtime) or openvino.
    """
    try:
        from ..serve import ServeOptions
        from ..serve import serve as run_server
    except ImportError as e:
        raise ValueError(f"vitkit serve needs the serve extra: pip install 'vitkit[serve]' ({e})") from None
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_bytes=max_bytes,
                           max_pixels=max_pixels, api_key=api_key, precision=precision, engine=engine)
    run_server(model, host, port, options, threads=threads, access_log=access_log)


def bench(device: Literal["cpu", "cuda"] = "cpu", repeats: int = 5,
          only: Literal["infer", "train"] | None = None, memory: bool = True, out: str | None = "speed.json",
          compiled: bool = False, json: bool = False) -> None:
    """Time vitkit, timm and Hugging Face transformers on the same ViTs, interleaved, in one run.

    Prints a table per workload and writes the results to --out. Example: vitkit bench --only infer

    Args:
        device: where to run.
        repeats: timed repeats per library and workload (the median is reported).
        only: just the inference or just the training workloads.
        memory: also measure training peak memory (the most tensor memory one step holds).
        out: where to write the results as JSON (none: nowhere).
        compiled: also time vitkit under torch.compile (inductor; compiling takes minutes on a CPU).
        json: print the results as JSON alone on stdout (the tables go to stderr).
    """
    from ..bench import run

    with json_mode(json):
        result = run(device, repeats, only, memory, Path(out) if out else None, compiled=compiled)
    if json:
        print_json(result)


