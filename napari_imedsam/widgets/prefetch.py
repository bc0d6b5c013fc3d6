"""Background embedding of a volume's slices, nearest the displayed slice first, for whole-slice models
(zoomed models encode each box's crop, so there is nothing to prefetch). It yields to boxes, clicks and
propagation, and restarts its order from the slice the user scrolls to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .dock import IMedSAMWidget


class Prefetcher:
    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.embedder = None  # BackgroundEmbedder of the current session

    def update(self) -> None:
        """Start embedding (or move the running embedder's centre to the displayed slice)."""
        from ..inference.background import BackgroundEmbedder

        dock = self.dock
        predictor = dock.state.predictor
        if predictor is None or predictor.zoom or dock.workers.closed or dock.labels_layer() is None:
            return  # no model, or the user removed the plugin's layers: scrolling does not bring them back
        try:
            session = dock.session()
        except (InputError, ValueError):
            return
        z = dock.layer_set().current_slice()
        embedder = self.embedder
        if embedder is not None and embedder.session is session and dock.workers.is_busy("prefetch"):
            embedder.center = z  # the running worker restarts its order from here
            return
        if embedder is None or embedder.session is not session:
            if embedder is not None:
                embedder.stop()
            embedder = self.embedder = BackgroundEmbedder(session, z, self.user_work_pending)
        embedder.center = z
        if embedder.pending() and not dock.workers.is_busy("prefetch"):
            embedder.stopped.clear()
            dock.workers.run("prefetch", embedder.run, on_error=lambda message: None, background=True,
                             on_done=self._done)  # a box will report real failures

    def _done(self) -> None:
        """A stopped or finished run: start again if the session, window or slice changed meanwhile."""
        if self.embedder is not None and not self.embedder.stopped.is_set() and self.embedder.pending():
            self.update()

    def user_work_pending(self) -> bool:
        """Work that background embedding yields to (read from its thread)."""
        dock = self.dock
        return bool(dock.prompter.pending) or dock.workers.is_busy("box") or dock.workers.is_busy("propagate")

    def stop(self) -> None:
        if self.embedder is not None:
            self.embedder.stop()
