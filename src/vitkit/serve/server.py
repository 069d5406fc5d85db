"""Running the app: opening the model, setting torch's threads, and uvicorn with clean shutdown.

One server process runs one model on one worker thread, so torch gets every core available
to the process for its intra-op parallelism and a single inter-op thread (parallel branches
would only compete for the same cores). Several processes on one machine should split the
cores between them (--threads, or OMP_NUM_THREADS): see the README's Serving section.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from .app import API_KEY_ENV, ServeOptions, create_app


def open_for_serving(source: str | Path) -> Any:
    """vitkit.open_model(source), as the server opens its model: a run directory, model
    directory, checkpoint or .onnx file as an OpenedModel."""
    from ..loading import open_model

    return open_model(source)


def configure_threads(threads: int | None = None) -> int:
    """torch intra-op threads = the cores this process may use (or `threads`), inter-op 1."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started in this process
        pass
    return n


def is_local(host: str) -> bool:
    """Whether host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def serve(source: str | Path, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None,
          threads: int | None = None, log_level: str = "info", access_log: bool = True) -> None:
    """Open the model and serve it until SIGINT/SIGTERM; requests in flight are finished."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: must be a TCP port from 1 to 65535")

    options = options or ServeOptions()
    n = configure_threads(threads)
    opened = open_for_serving(source)
    key = options.api_key or os.environ.get(API_KEY_ENV)
    if not is_local(host) and not key:
        print(f"vitkit serve: warning: listening on {host} without an API key: anyone who can reach "
              f"this address can use the model; set --api_key or {API_KEY_ENV}", file=sys.stderr)
    app = create_app(opened, options)
    engine = app.state.engine
    print(f"vitkit serve: {engine.name} ({engine.num_params:,} parameters, {engine.precision}, "
          f"{engine.engine}, {n} threads), max batch {options.max_batch}, max wait "
          f"{options.max_wait_ms:g} ms, on http://{host}:{port}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=30, server_header=False)
    # Everything alive now (torch, the model, the app) lives as long as the process: keep it
    # out of the garbage collector's full passes, which otherwise walk a few hundred thousand
    # objects while holding the GIL and stalled the event loop (and /health) by up to 0.5 s
    # under load on a 2-core machine.
    gc.collect()
    gc.freeze()
    with _stop_quietly() as received:
        uvicorn.Server(config).run()
    if received:
        print(f"vitkit serve: stopped by {signal.Signals(received[0]).name}", file=sys.stderr)


@contextlib.contextmanager
def _stop_quietly():
    """uvicorn handles SIGINT/SIGTERM itself (stop accepting, finish requests in flight, run the
    app's shutdown), then re-sends the signal to the handler that was there before it; this
    one records it, so a requested stop ends the process normally (exit status 0)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda sig, frame: received.append(sig))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
