"""One way to run work off the Qt main thread: `Workers.run(fn, ..., on_result=...)`.

Every failure reaches the dock once, as one message; results that arrive after the dock closed are
dropped; closing the window cancels generator workers and waits for running ones, so no worker
emits into deleted Qt objects. Tests and benchmarks wait on `Workers.idle` / `is_busy`.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QThreadPool, Signal

from ..errors import CheckpointError, InputError, os_error_text

log = logging.getLogger(__name__)
USER_ERRORS = (InputError, CheckpointError, ValueError, OSError, MemoryError)


def error_message(exc: BaseException) -> str:
    """One line for a worker's failure: the message of errors a user can fix, else the type too."""
    if isinstance(exc, OSError) and exc.strerror:
        return os_error_text(exc)
    if isinstance(exc, USER_ERRORS):
        return str(exc) or type(exc).__name__
    log.error("napari-imedsam worker failed:\n%s", "".join(traceback.format_exception(exc)))
    return f"unexpected {type(exc).__name__}: {exc} (details in the terminal log)"


def _with_threads(fn: Callable, background: bool) -> Callable:
    """`fn`, first setting the worker thread's torch thread count (generators stay generators)."""
    from ..inference.threads import use_compute_threads

    if inspect.isgeneratorfunction(fn):
        def generator(*args):
            use_compute_threads(background)
            return (yield from fn(*args))
        return generator

    def function(*args):
        use_compute_threads(background)
        return fn(*args)
    return function


class Workers(QObject):
    """The dock's running workers."""

    idle = Signal()  # emitted when the last running worker (background jobs aside) has finished

    def __init__(self, on_error: Callable[[str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._on_error = on_error
        self._running: dict[str, Any] = {}
        self._background: set[str] = set()  # names of running background jobs
        self.closed = False

    def is_busy(self, name: str | None = None) -> bool:
        """Whether job `name` runs; without a name, whether any job but background ones runs."""
        return bool(set(self._running) - self._background) if name is None else name in self._running

    def run(self, name: str, fn: Callable, *args, on_result: Callable | None = None,
            on_yield: Callable | None = None, on_done: Callable | None = None, progress: dict | None = None,
            on_error: Callable[[str], None] | None = None, background: bool = False):
        """Start `fn(*args)` in a thread (a generator streams through `on_yield`); `name` identifies the
        job (one per name at a time: the caller checks `is_busy(name)`). The job's torch compute uses
        all CPUs but one (`background`: one), so the GUI thread keeps a core."""
        worker = create_worker(_with_threads(fn, background), *args, _ignore_errors=True,
                               _progress=progress or False)

        def guarded(handler):
            def slot(*values):
                if not self.closed and handler is not None:
                    handler(*values)
            return slot

        report = on_error or self._on_error
        worker.errored.connect(guarded(lambda exc: report(error_message(exc))))
        if on_result is not None:
            worker.returned.connect(guarded(on_result))
        if on_yield is not None:
            worker.yielded.connect(guarded(on_yield))

        def finished() -> None:
            if self.closed:  # the window (and maybe this QObject) is gone
                return
            if self._running.get(name) is worker:
                del self._running[name]
                self._background.discard(name)
            if on_done is not None:
                on_done()
            if not background and not self.is_busy():
                self.idle.emit()

        worker.finished.connect(finished)
        self._running[name] = worker
        if background:
            self._background.add(name)
        worker.start()
        return worker

    def quit(self, name: str) -> None:
        """Ask a generator worker to stop after its current item."""
        worker = self._running.get(name)
        if worker is not None and hasattr(worker, "quit"):
            worker.quit()

    def shutdown(self, timeout_ms: int = 30000) -> None:
        """Closing: drop later results, stop generators, wait for the threads (bounded)."""
        self.closed = True
        for worker in list(self._running.values()):
            if hasattr(worker, "quit"):
                worker.quit()
        if QThreadPool.globalInstance().waitForDone(timeout_ms):
            self._running.clear()  # their queued 'finished' signals are dropped with the window
