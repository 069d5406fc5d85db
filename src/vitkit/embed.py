"""`vitkit embed` as a library call: frozen features of image files, written with their names,
and the nearest neighbours of a query image among them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import check_output_file
from .embeddings import check_format, names_path, nearest, write_embeddings

if TYPE_CHECKING:
    from .features import FeatureOptions
    from .loading import LoadOptions


def embed_images(weights: str, images: list[str], out: str | None = None, query: str | None = None,
                 top: int = 5, features: FeatureOptions | None = None, cache_dir: str | None = None,
                 load: LoadOptions | None = None) -> dict:
    """Features of every image (cached per file), written to `out` and/or searched with `query`;
    returns what was computed, written and found. Outputs are checked before any work."""
    from .data.folder import list_images
    from .features import FeatureModel, FeatureOptions, file_features  # the model stack, when used
    from .loading import open_model

    if not out and not query:
        raise ValueError("nothing to do: give --out FILE (.npy, .safetensors or .parquet) and/or "
                         "--query IMAGE")
    if query and not Path(query).is_file():
        raise FileNotFoundError(f"--query {query}: no such file")
    if out:
        check_output_file(out)
        if check_format(out) == ".npy":
            check_output_file(names_path(out))
    files = list_images(images)
    fm = FeatureModel(open_model(weights, load), features or FeatureOptions())
    emb = file_features(fm, files, cache_dir)
    summary: dict = dict(images=len(emb.names), features=int(emb.features.shape[1]), token=fm.token,
                         layer=fm.layer, precision=fm.precision, from_cache=emb.from_cache)
    if out:
        summary["written"] = [str(p) for p in write_embeddings(out, emb.features, emb.names)]
    if query:
        q = file_features(fm, [Path(query)], cache=False)
        same = Path(query).resolve()
        keep = [i for i, n in enumerate(emb.names) if Path(n).resolve() != same]
        idx, sim = nearest(q.features, emb.features[keep], top)
        summary["query"] = query
        summary["nearest"] = [{"file": emb.names[keep[i]], "similarity": float(s)}
                              for i, s in zip(idx[0], sim[0], strict=True)]
    return summary


def summary_lines(s: dict) -> list[str]:
    """What `vitkit embed` prints of embed_images' summary: the features, the files written and
    the query's nearest neighbours."""
    lines = [f"{s['images']} images, {s['features']} features each ({s['token']} token of block "
             f"{s['layer']}, {s['precision']})" + (", from the cache" if s["from_cache"] else "")]
    if "written" in s:
        lines.append("wrote " + ", ".join(s["written"]))
    if "query" in s:
        lines.append(f"nearest to {s['query']} (cosine similarity):")
        lines += [f"  {rank:>2}. {n['similarity']:.4f}  {n['file']}"
                  for rank, n in enumerate(s["nearest"], 1)]
    return lines
