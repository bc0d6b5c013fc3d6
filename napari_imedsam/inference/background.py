"""Embedding every slice of an image while the user works, nearest the displayed slice first.

`BackgroundEmbedder.run` is a generator for a worker thread: it embeds one slice at a time, always
the not-yet-embedded slice nearest to `center` (the displayed slice: set it when the user scrolls,
and the order restarts from there), and before each slice waits while `busy()` says a box or a
propagation needs the CPU, so a box never waits behind more than the one slice being encoded.
Only for whole-slice models: a zoom model encodes box crops, not slices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from .session import AnnotationSession

POLL_S = 0.02


def outward(center: int, n: int) -> list[int]:
    """Slices 0..n-1 ordered by distance from `center`: center, center+1, center-1, center+2, …"""
    center = min(max(int(center), 0), n - 1)
    order = [center]
    for step in range(1, n):
        order += [s for s in (center + step, center - step) if 0 <= s < n]
    return order


class BackgroundEmbedder:
    """Embeds all slices of `session`'s image in the background; see the module docstring."""

    def __init__(self, session: AnnotationSession, center: int | None = None,
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.session = session
        self.center = center
        self.busy = busy
        self.stopped = threading.Event()
        self._done: dict[int | None, tuple] = {}  # slice -> what it was embedded with (model, adapters, window)

    def _token(self) -> tuple:
        predictor, window = self.session.predictor, self.session.window
        return (*predictor.model.cache_token, None if window is None else window.cache_token())

    def pending(self) -> list[int | None]:
        """Slices still to embed, in the order they would be embedded now."""
        token = self._token()
        slices = [None] if not self.session.is_volume else outward(self.center or 0, self.session.n_slices)
        return [s for s in slices if self._done.get(s) != token]

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> Iterator[int | None]:
        """Embed slices until all are done or `stop()`; yields each slice index as it is embedded."""
        while not self.stopped.is_set():
            predictor = self.session.predictor
            if predictor is None or predictor.zoom:
                return
            if self.busy():
                time.sleep(POLL_S)
                continue
            todo = self.pending()
            if not todo:
                return
            token = self._token()
            self.session.embed(todo[0])
            self._done[todo[0]] = token
            yield todo[0]
