"""How a run stops before its end: a signal (finish the step, save, return) or a loss that
is no longer finite (stop, keep the last good checkpoint)."""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def check_finite(loss: float, step: int, epoch: int, run_dir: Path) -> None:
    """Stop at a NaN or infinite mean loss (`epoch` counted from 0), naming what to try."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss became {loss} at step {step} (epoch {epoch + 1}); the last good "
                            f"checkpoint in {run_dir} is kept. Try a lower --optim.lr or "
                            "--run.precision fp32")


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves, and returns."""

    def __init__(self):
        self.set = False
        self.signal_name = ""
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop at once (files on disk are still whole)
            raise KeyboardInterrupt
        self.set = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step, then saving...", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
