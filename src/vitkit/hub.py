"""Hugging Face Hub ids as model sources: the local cache first, else a download of the few
files a model needs (config, weights, preprocessor settings; safetensors rather than a
pickle when the repository has both) into huggingface_hub's own cache, with its progress
bars. ``HF_HUB_OFFLINE=1`` or ``offline=True`` keep to the cache. ``HF_ENDPOINT`` names
another Hub (a mirror), read when a download starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["HUB_FILES", "WEIGHT_FILES", "hub_folder", "is_offline"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
META_FILES = ("config.json", "preprocessor_config.json")
HUB_FILES = META_FILES + WEIGHT_FILES


def is_offline(offline: bool = False) -> bool:
    """True when downloads are off: asked for, or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set
    (read now, so a variable set after huggingface_hub was imported still counts)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return offline or constants.is_offline_mode() or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_folder(repo_id: str, offline: bool = False) -> Path:
    """The snapshot folder of `repo_id`: from the cache when it holds the weights, else downloaded."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise ValueError(f"{repo_id}: no such path; reading Hub ids needs huggingface_hub "
                         "(pip install huggingface_hub)") from None
    cached = _cached(repo_id)
    if cached is not None:
        return cached
    if is_offline(offline):
        why = "--load.offline is set" if offline else "HF_HUB_OFFLINE is set"
        raise FileNotFoundError(
            f"{repo_id}: no such path, and not in the local Hugging Face cache ({why}); download it first "
            f"(`hf download {repo_id}` or huggingface_hub.snapshot_download('{repo_id}')) or pass a "
            "local folder")
    return _download(repo_id)


def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in WEIGHT_FILES)


def _cached(repo_id: str) -> Path | None:
    """The cached snapshot of the default branch, if it holds a weights file."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # only the small files are checked for completeness: the repository may hold unused weights
        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=list(META_FILES)))
    except LocalEntryNotFoundError:  # IncompleteSnapshotError included
        return None
    return folder if _has_weights(folder) else None


def _download(repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    url = endpoint()
    try:
        files = {s.rfilename for s in HfApi(endpoint=url).model_info(repo_id, revision="main").siblings or []}
        weights = next((n for n in WEIGHT_FILES if n in files), None)
        if weights is None:
            sharded = sorted(f for f in files if f.endswith(".index.json"))
            what = (f"sharded checkpoints ({sharded[0]}) are not supported" if sharded else
                    f"no {' or '.join(WEIGHT_FILES)} in it (files: {', '.join(sorted(files)[:8]) or 'none'})")
            raise ValueError(f"{repo_id} on {url}: {what}")
        wanted = [n for n in META_FILES if n in files] + [weights]
        print(f"downloading {repo_id} from {url}: {', '.join(wanted)}", file=sys.stderr, flush=True)
        return Path(snapshot_download(repo_id, allow_patterns=wanted, endpoint=url))
    except ValueError:
        raise
    except Exception as e:  # one line for each way a download fails
        raise _one_line(repo_id, url, e) from None


def _one_line(repo_id: str, url: str, e: Exception) -> Exception:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        return ValueError(f"{repo_id}: a gated repository on {url}; accept its terms on the Hub and log in "
                          "(`hf auth login`)")
    if isinstance(e, RepositoryNotFoundError):
        return FileNotFoundError(f"{repo_id}: no such path, and no such model repository on {url} "
                                 "(or it is private: log in with `hf auth login`)")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HfHubHTTPError) and status is not None:
        return ValueError(f"{repo_id}: the Hub at {url} answered HTTP {status}; try again later, or pass "
                          "--load.offline true to use the local cache only")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ValueError(f"{repo_id}: cannot download from {url} ({type(e).__name__}: {first}); check the "
                      "connection, or pass --load.offline true to use the local cache only")
