"""Volume actions of the dock: propagate the selected object through the volume, and the review queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari.utils.notifications import show_info

from ..errors import InputError

if TYPE_CHECKING:
    from .dock import IMedSAMWidget


class VolumeActions:
    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.stop_reasons: list[str] = []
        self.suggested: int | None = None  # the slice the review queue last went to
        self.passed: set[int | None] = set()  # slices the user moved on from without accepting them
        self._reviewing: int | None = None  # id of the session those two belong to

    def propagate(self) -> None:
        """Carry the selected object from the displayed slice through the volume, both directions."""
        from ..inference.propagation import propagate_both

        dock = self.dock
        if dock.workers.is_busy("propagate"):
            dock.error("propagation is already running: cancel it first")
            return
        try:
            session = dock.session()
            if not session.is_volume:
                raise InputError("propagation needs a 3D volume; this image is 2D")
            z = dock.layer_set().current_slice()
            label = int(dock.labels_layer().selected_label)
            if not (session.slice_labels(z) == label).any():
                raise InputError(f"object {label} has no pixels on slice {z}: select its label in "
                                 f"'{dock.labels_layer().name}' or draw a box first")
        except (InputError, ValueError) as exc:
            dock.error(str(exc))
            return
        self.stop_reasons = []

        def run():
            yield from propagate_both(session, z, label, self.stop_reasons)

        session.begin_group()
        written = []

        def on_yield(result) -> None:
            written.append(result.slice_index)
            dock.show_result(result, quiet=True)
            dock.set_status(f"Propagating object {label}: slice {result.slice_index} ({len(written)} done)…")

        def on_done() -> None:
            session.end_group()
            dock.cancel_button.enabled = False
            if written:
                dock.set_status(f"Object {label} propagated to {len(written)} slices ({min(written)}–{max(written)}); "
                                f"{'; '.join(self.stop_reasons) or 'stopped at your request'}. "
                                "Next uncertain slice shows where to check first.")
            else:
                dock.set_status(f"Object {label} was not propagated: {'; '.join(self.stop_reasons)}.")

        dock.cancel_button.enabled = True
        dock.set_status(f"Propagating object {label} from slice {z}…")
        dock.workers.run("propagate", run, on_yield=on_yield, on_done=on_done,
                         progress={"total": 0, "desc": f"I-MedSAM: propagating object {label}"})

    def cancel(self) -> None:
        self.dock.workers.quit("propagate")

    def next_uncertain_slice(self) -> None:
        """Jump to the unaccepted slice whose labels are most likely wrong."""
        from ..inference.review import review_scores

        dock = self.dock
        try:
            session = dock.session()
        except (InputError, ValueError) as exc:
            dock.error(str(exc))
            return
        current = dock.layer_set().current_slice()
        if self._reviewing != id(session):  # another image: its own queue
            self._reviewing, self.suggested, self.passed = id(session), None, set()
        if current == self.suggested and current is not None:  # pressed again on it: the user moves on
            self.passed.add(current)

        def done(scores) -> None:
            if not scores:
                show_info("Nothing to review: every labelled slice is accepted.")
                return
            left = {z: score for z, score in scores.items() if z not in self.passed}
            if not left:  # every candidate was passed once: start over from the most likely
                self.passed = {current} if len(scores) > 1 else set()
                left = {z: score for z, score in scores.items() if z not in self.passed}
            z = max(left, key=lambda s: (left[s].total, -abs((s or 0) - (current or 0))))
            self.suggested = z
            dock.layer_set().go_to_slice(z)
            why = "; ".join(scores[z].reasons[:3]) or "lowest confidence"
            where = "This image" if z is None else f"Slice {z}"
            rank = sorted(scores, key=lambda s: -scores[s].total).index(z) + 1
            more = " Next uncertain slice again goes on to the next one." if len(scores) > 1 else ""
            dock.set_status(f"{where} is the most likely to be wrong of {len(scores)} unaccepted ({why}). Review, "
                            f"correct, accept.{more}" if rank == 1 else
                            f"{where}: number {rank} of {len(scores)} to review ({why}).{more}")

        dock.workers.run("review", review_scores, session, on_result=done)
