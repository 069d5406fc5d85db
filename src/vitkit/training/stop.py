"""How a run stops before its end: a signal (finish the step, save, return) or a loss that
is no longer finite (stop, keep the last good checkpoint)."""

from __future__ import annotations

import signal
import sys
import threading


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
