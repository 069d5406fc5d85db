"""Files that appear whole or not at all.

Every file vitkit writes goes through `atomic_write`: to a temporary file in the same
directory, flushed and fsynced, then renamed over the target. A crash or Ctrl-C leaves the
old file or the new one, never a torn one; the temporary file a killed writer leaves behind
is removed by the next write into its directory. Nothing here knows about models.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file through write(f) so that it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


# The temporary file of a write: ".NAME.PID-RANDOM.tmp"; without "PID-": made before writers named
# themselves.
_TEMPORARY = re.compile(r"\..+\.(?:(\d+)-)?[a-z0-9_]{8}\.tmp")
UNNAMED_AGE_S = 3600  # a temporary file that names no writer is a leftover once this old


def remove_leftovers(directory: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted writes (kill -9, power loss) left in
    directory: those whose writing process no longer runs. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TEMPORARY.fullmatch(e.name)
        if m is None or not e.is_file(follow_symlinks=False):
            continue
        try:
            stale = (not _running(int(m.group(1))) if m.group(1)
                     else time.time() - e.stat().st_mtime > UNNAMED_AGE_S)
            if stale:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a whole folder through write(tmp) into a temporary sibling, then put it in place of
    `path` (whatever was there goes only once the new folder is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        write(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}-old.tmp")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """torch.save through a temporary file; the result loads with weights_only=True."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Tensors as safetensors (contiguous, detached, on the CPU)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(sd, metadata={"format": "pt"}))


def read_json(path: str | Path) -> Any:
    """JSON from a file, with a one-line error naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
