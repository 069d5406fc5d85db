"""The commands that read a frozen representation or prepare data: probe, embed, shards."""

from __future__ import annotations

from ..data.pipeline import DataConfig
from ..features import FeatureOptions
from ..loading import LoadOptions
from .support import json_mode, print_json, print_lines


def probe(weights: str, data: DataConfig = DataConfig(), features: FeatureOptions = FeatureOptions(),
          shots: list[int] | None = None, draws: int = 5, seed: int = 0, linear: bool = True, c: float = 1.0,
          knn_k: int = 20, temperature: float = 0.07, cache_dir: str | None = None, out: str | None = None,
          load: LoadOptions = LoadOptions(), json: bool = False) -> None:
    """Measure a frozen representation: few-shot linear accuracy as in the paper (closed-form
    ridge to {-1,1}^K targets), a logistic-regression probe and weighted k-NN, on the test split.

    Features are computed once and cached, so probing the same model and data again reads them.
    Reads WEIGHTS and the data; prints one table (and writes it as JSON with --out).
    Example: vitkit probe runs/pretrain --data.dataset digits --out probe.json

    Args:
        weights: a run or model folder, another library's checkpoint or folder, or a Hub id.
        data: the data: fitted on its training split, measured on its test (validation) split.
        features: which block and token are read, batch size and precision.
        shots: training images per class of the few-shot fits (default 1, 5, 10, 25; [] for none).
        draws: seeded random draws of the few-shot images (mean and spread are reported).
        seed: seed of the few-shot draws.
        linear: also fit the logistic-regression probe on every training feature.
        c: inverse L2 strength of the logistic regression.
        knn_k: neighbours of the k-NN read-out (0: none).
        temperature: k-NN vote weight exp(similarity / temperature).
        cache_dir: where features are cached (default: the vitkit cache directory).
        out: also write the results as JSON to this file.
        load: what the checkpoint may not record (heads, classes, normalization).
        json: print the results as JSON alone on stdout instead of the table.
    """
    from ..probe import SHOTS, probe_path

    with json_mode(json):
        result = probe_path(weights, data, features, cache_dir, out, load, shots=list(SHOTS) if shots is None
                            else shots, draws=draws, seed=seed, linear=linear, c=c, knn_k=knn_k,
                            temperature=temperature)
    if json:
        print_json(result.to_dict())


def embed(weights: str, images: list[str], out: str | None = None, query: str | None = None, top: int = 5,
          features: FeatureOptions = FeatureOptions(), cache_dir: str | None = None,
          load: LoadOptions = LoadOptions(), json: bool = False) -> None:
    """Embeddings of image files (frozen features), written with the file names, or the images
    most similar to a query image (cosine).

    Usage: vitkit embed MODEL IMAGES_OR_FOLDER --out FILE.npy|.safetensors|.parquet, or --query IMG.
    Example: vitkit embed runs/digits photos/ --out photos.npy

    Args:
        weights: a run or model folder, another library's checkpoint or folder, or a Hub id.
        images: image files and/or folders (searched recursively).
        out: where to write: .npy (with FILE.names.json), .safetensors (names in its metadata) or
            .parquet (columns name and features, one row per image; pip install 'vitkit[parquet]').
        query: an image whose nearest neighbours among the images are printed.
        top: how many neighbours to print.
        features: which block and token are read, batch size and precision.
        cache_dir: where features are cached (default: the vitkit cache directory).
        load: what the checkpoint may not record (heads, classes, normalization).
        json: print what was computed, written and found as JSON alone on stdout.
    """
    from ..embed import embed_images, summary_lines

    with json_mode(json):
        summary = embed_images(weights, images, out, query, top, features, cache_dir, load)
    print_json(summary) if json else print_lines(summary_lines(summary))


def shards(src: str, out: str, shard_size: int = 1000, seed: int = 0) -> None:
    """Write an image folder (root/<class>/<image>) as WebDataset-style tar shards for streaming.

    Writes OUT/shard-NNNNNN.tar and OUT/index.json.
    Example: vitkit shards photos/ photo-shards/ --shard_size 500

    Args:
        src: the image folder (any folder vitkit trains on).
        out: the directory to write shard-NNNNNN.tar and index.json into.
        shard_size: images per shard.
        seed: the random order in which images are spread over the shards (classes mixed).
    """
    from ..data.shards import shard_folder

    print(shard_folder(src, out, shard_size, seed))


