"""Export accepted slices, one-click fine-tuning in a worker, and adapter versions.

Training runs on a copy of the live model with the user's own inference settings (zoom, window)
and reports "before -> after" on held-back accepted objects measured the same way; the starting
weights compete with every validation round, so the loaded result is never worse on them; a run that
does not beat them saves no new version and leaves the live model as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..errors import InputError
from .controls import version_choices

if TYPE_CHECKING:
    from .dock import IMedSAMWidget


class _Progress(QObject):
    """Carries (step, total) from the training thread to the dock's progress bar."""

    step = Signal(int, int)


def dataset_name(layer_name: str) -> str:
    """A folder name for an image layer's export and adapters (a safe slug plus a short hash)."""
    from ..io.export import dataset_folder_name

    return dataset_folder_name(layer_name)


class FineTuner:
    def __init__(self, dock: IMedSAMWidget) -> None:
        self.dock = dock
        self.cancelled = False
        self.last_report = None
        self.signal = _Progress()
        self.signal.step.connect(self._on_step)

    def export_dir(self) -> Path:
        return Path(self.dock.workdir.value) / "exports" / dataset_name(self.dock.image_layer().name)

    def _export_items(self) -> tuple[list, list]:
        """(ExportSlice items, their slice indices) for the accepted slices not exported yet (copies,
        made on the GUI thread; writing them is the worker's job)."""
        from ..io.export import ExportSlice, slice_affine

        dock = self.dock
        session = dock.session()
        layers = dock.layer_set()
        image = layers.image
        in_plane = [a for a in range(len(layers.shape)) if a != layers.axis]
        spacing = tuple(float(image.scale[a]) for a in in_plane[-2:])
        source = str(image.source.path or image.metadata.get("source_path") or image.name)
        window = session.window
        extra = {} if window is None else {"window": {k: getattr(window, k) for k in (
            "mode", "level", "width", "low_percentile", "high_percentile")}}
        model = dock.state.model
        objects = session.accepted_objects()
        nifti = None if image.rgb else image.metadata.get("affine")

        def affine(z):  # read from NIfTI: each slice keeps the scan's geometry
            return None if nifti is None else slice_affine(nifti, len(layers.shape), layers.axis, z)

        items = [ExportSlice(pixels, labels, boxes, source=source, slice_index=z, axis=layers.axis,
                             model=model.model_id if model else "", spacing=spacing, affine=affine(z), extra=extra,
                             adapter_version=model.adapter_version if model else "")
                 for z, pixels, labels, boxes in objects]
        return items, [z for z, *_ in objects]

    def export(self) -> None:
        """Append the accepted slices not exported yet to the work folder's export (nnU-Net layout), in a
        worker."""
        from ..io.export import export_slices

        dock = self.dock
        if self._writing("an export"):
            return
        try:
            session = dock.session()
            items, slices = self._export_items()
            folder = self.export_dir()
            if not items and session.accepted:  # fine-tuning exports what is new too
                raise InputError(f"the {len(session.accepted)} accepted slice(s) are already exported to {folder}: "
                                 "accept more slices to export them")
            if not items:
                raise InputError("no new accepted slices to export: correct a slice, then press Accept slice")
        except (InputError, ValueError, OSError) as exc:
            dock.error(str(exc))
            return

        def exported(cases: list[str]) -> None:
            session.mark_exported(slices)
            there = len(list((folder / "labelsTr").glob("*.nii.gz")))
            dock.set_status(f"Exported {len(cases)} slice(s) to {folder} ({there} case(s) there now)")

        dock.set_status(f"Exporting {len(items)} slice(s)…")
        dock.workers.run("export", export_slices, folder, items, on_result=exported)

    def start(self) -> None:
        """Export what is new, then train a copy of the model; both in workers. The result is loaded
        when done."""
        dock = self.dock
        if self._writing("fine-tuning"):
            return
        try:
            session = dock.session()
            items, slices = self._export_items()
            folder = self.export_dir()
        except (InputError, ValueError, OSError) as exc:
            dock.error(str(exc))
            return
        model = dock.state.model
        mode = "decoder" if model.device.type == "cpu" else "adapters"
        steps = int(dock.steps.value)
        options = {"mode": mode, "steps": steps, "validate_every": max(1, steps // 5), "seed": 0, "lr_decoder": 3e-4,
                   "val_fraction": 0.34}
        self.cancelled = False
        dock.progress.max, dock.progress.value, dock.progress.visible = steps, 0, True
        dock.cancel_finetune_button.enabled = True
        dock.set_status(f"Fine-tuning ({mode} mode): exporting {len(items)} new slice(s), {steps} steps…")

        def failed(message: str) -> None:
            self._done()
            dock.error(message)

        def prepared(result) -> None:
            session.mark_exported(slices)
            samples, candidate = result
            if candidate is None:
                failed("fine-tuning needs at least 2 accepted objects (some are held back to measure Dice); "
                       f"{len(samples)} so far: accept more corrected slices")
                return
            if mode == "decoder":  # said once training starts: not before an error that stops it
                show_info("No GPU: fine-tuning the decoder only (prompt encoder, upscaling, INRs); the encoder "
                          "stays frozen.")
            dock.set_status(f"Fine-tuning ({mode} mode) on {len(samples)} accepted objects: {steps} steps…")
            dock.workers.run("finetune", _train, candidate, samples, options, dock.workdir.value, folder.name,
                             lambda: self.cancelled, self.signal.step.emit,
                             on_result=self._finished, on_done=self._done)

        dock.workers.run("finetune", _prepare, model, items, folder, on_result=prepared, on_error=failed)

    def _writing(self, asked: str) -> bool:
        """Whether an export or a fine-tuning run (which exports first) is still going: then `asked` is
        refused with one message. Both export the accepted slices not marked exported yet, and a slice is
        marked when its export ends: a second one started meanwhile would write the same slices again."""
        busy = next((name for name in ("export", "finetune") if self.dock.workers.is_busy(name)), None)
        if busy is not None:
            running = "an export" if busy == "export" else "fine-tuning"
            self.dock.error(f"{running} is already running" if running == asked else
                            f"{running} is still running: {asked} can start when it ends")
        return busy is not None

    def _on_step(self, step: int, total: int) -> None:
        self.dock.progress.value = step
        if step % 10 == 0 or step == total:
            self.dock.set_status(f"Fine-tuning: step {step} of {total}…")

    def cancel(self) -> None:
        self.cancelled = True  # the trainer stops after the current step and keeps the best so far

    def _done(self) -> None:
        self.dock.progress.visible = False
        self.dock.cancel_finetune_button.enabled = False

    def _finished(self, report) -> None:
        from ..model.weights import trainable_state

        self.last_report = report
        cancelled = " (cancelled early)" if report.cancelled else ""
        if not report.saved:  # the result is the weights it started from: no version, the live model stays
            self._nothing_new(report, cancelled)
            return
        version = f"{report.version_path.parent.name}/{report.version_path.stem}"
        state = self.dock.state
        base = state.versions.get("base")
        if base is None or base.cache_token[:2] != report.model.cache_token[:2]:
            show_warning(f"{report.summary}. Saved {report.version_path}; another model was loaded meanwhile, "
                         "so this version is not offered here (load it with the model it was trained on)")
            return
        # the base's frozen weights, shared, with this run's adapters: switching never reloads or copies them
        state.versions[version] = base.with_adapters(trainable_state(report.model.network), str(report.version_path))
        self.dock.version_combo.choices = version_choices(state.versions)
        self.dock.version_combo.value = version  # switches to it (see use_version)
        message = f"{report.summary}. Loaded {version}{cancelled}"
        (show_warning if report.n_val < 3 else show_info)(message)
        self.dock.set_status(message)

    def _nothing_new(self, report, cancelled: str) -> None:
        """Training ended with the weights it started from: no new version was saved, nothing switches."""
        message = f"{report.summary}. No new version saved{cancelled}"
        if report.nothing_to_learn:
            message += (": the same weights as before, because the accepted masks match what the model predicts, "
                        "so there was nothing to learn; correct them where the model is wrong, then fine-tune")
        else:
            message += f": the weights it started from are still the best; still using {self.dock.version_combo.value}"
        (show_warning if report.n_val < 3 else show_info)(message)
        self.dock.set_status(message)

    def use_version(self, version: str) -> None:
        """Switch the live model to an adapter version (`base`: the model as loaded). Each version is its
        own handle over the same frozen weights; the predictor and sessions move to it."""
        from .models import serve

        state = self.dock.state
        model = state.versions.get(version)
        if state.model is None or model is None or model is state.model:
            return
        serve(self.dock, model)  # a new embedding cache key (the handle's cache_token): nothing stale is reused
        self.dock.set_status(f"Using adapter version {version}.")
        self.dock.prefetch()  # embed the slices again, for this version


def _prepare(model, items: list, folder: Path) -> tuple[list, object]:
    """Worker: write the new slices to the export, read the whole export back; the model to train from
    if there is enough to train on (None if not; the trainer trains a copy)."""
    from src_train.data import load_export

    from ..io.export import export_slices

    if items:
        export_slices(folder, items)
    samples = load_export(folder) if folder.exists() else []
    return samples, (model if len(samples) >= 2 else None)


def _train(candidate, samples: list, options: dict, workdir: str, name: str, should_stop, on_step):
    """Worker: fine-tune a copy of `candidate` (the live model) and save the new adapter version (the
    trainer is imported here, not on the GUI thread)."""
    from src_train.trainer import TrainOptions, train

    return train(candidate, samples, TrainOptions(**options), workdir, name, None, should_stop,
                 "napari-imedsam fine-tune button", on_step)
