"""Ctrl-C during a long command-line job: stop it cleanly, keeping what it has so far."""

from __future__ import annotations

import sys


def world_size() -> int:
    """Processes in this run (torchrun's WORLD_SIZE; 1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


class StopOnInterrupt:
    """Ctrl-C during training: the first stops it after the current step (the best weights so far are
    saved, as the dock's Cancel does); a second one aborts. Use as a context manager."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def _interrupt(self, signum, frame) -> None:
        if self.stopped:
            raise KeyboardInterrupt
        self.stopped = True
        print("\ninterrupted: stopping after this step and saving the best weights so far "
              "(Ctrl-C again aborts without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopOnInterrupt:
        import signal
        import threading

        self._previous = None  # one process only: ranks of a distributed run must stop together (torchrun's)
        if threading.current_thread() is threading.main_thread() and world_size() <= 1:
            self._previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
