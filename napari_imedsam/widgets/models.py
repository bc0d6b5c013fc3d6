"""Loading a model in the dock: the choice -> a worker that imports the model code (after the triton
guard) and loads weights and corrector -> the dock's model, with its layers ready to draw on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._lazy_imports import guard_triton, preload_torch_libraries, without_collector_pauses
from ..errors import CheckpointError, InputError
from .controls import CHECKPOINT, UNTRAINED_TINY, version_choices

if TYPE_CHECKING:
    from .dock import IMedSAMWidget


def load_selected(self: IMedSAMWidget) -> None:
    """The Load button: load the chosen model (and corrector) in a worker."""
    choice = self.model_combo.value
    if choice == CHECKPOINT:
        path = Path(str(self.checkpoint.value or ""))
        if not str(self.checkpoint.value or "").strip() or path.is_dir():
            self.error("choose a checkpoint file (.pth, .pt or .safetensors) first")
            return
    source = {UNTRAINED_TINY: "tiny", CHECKPOINT: str(self.checkpoint.value)}.get(choice, choice)
    adapters = str(self.adapters.value) if self.adapters.value else None
    corrector = str(self.corrector_file.value) if self.corrector_file.value else None
    refiner = str(self.refiner_file.value) if self.refiner_file.value else None
    choices = {"model_combo": choice, "checkpoint": self.checkpoint.value, "device_combo": self.device_combo.value,
               "adapters": self.adapters.value, "corrector_file": self.corrector_file.value,
               "refiner_file": self.refiner_file.value}
    self.set_status(f"Loading {source}…")
    # No napari progress bar for this job: its first appearance makes Qt load a library, which waits
    # for the loader lock that the worker's `preload_torch_libraries` holds (a 400 ms freeze, measured).
    self.workers.run("load", load_in_worker, source, self.device_combo.value, adapters, corrector, refiner,
                     on_result=lambda loaded: use(self, *loaded, stepwise=True, choices=choices))


def use(self: IMedSAMWidget, loaded, corrector=None, stepwise: bool = False, choices: dict | None = None) -> None:
    """Make a loaded model (and corrector) the dock's model: versions reset, layers ready, slices
    embedding. `stepwise`: add the plugin layers one per turn of the event loop (the Load button);
    `choices`: the dock fields it was loaded from (a reopened dock shows them again)."""
    self.state.corrector = corrector
    self.state.choices = dict(choices or {})
    warn_if_unhelpful(corrector, "this corrector did not beat the refined mask",
                      "treat its suggestions with care")
    warn_if_unhelpful(getattr(loaded, "click_refiner", None), "this click refiner did not beat the random walker "
                      "alone", "its clicks may be worse than the walker's", key="score")
    serve(self, loaded, keep_cache=False)
    self.state.versions = {"base": loaded}
    self.version_combo.choices = version_choices(["base"])
    if stepwise:
        self.set_status(f"Model {loaded.model_id} loaded; adding its layers…")
        add_layers_stepwise(self, lambda: ready(self, loaded))
    else:
        ready(self, loaded)


def warn_if_unhelpful(stage, what: str, advice: str, key: str = "dice") -> None:
    """A second stage (corrector, click refiner) whose training found no round better than going
    without it: say so once, with the held-back score (`key`) its file records."""
    if (getattr(stage, "header", None) or {}).get("helps") is not False:  # also: no stage, or one made in code
        return
    from napari.utils.notifications import show_warning

    scores = stage.held_back(key)
    measured = f" (held-back Dice {scores[0]:.3f} -> {scores[1]:.3f})" if scores else ""
    show_warning(f"{what} when it was trained{measured}: {advice}")


def add_layers_stepwise(self: IMedSAMWidget, then) -> None:
    """Add the missing plugin layers one per turn of the event loop, then call `then()`. napari spends
    ~60 ms of the GUI thread on each layer it adds (its controls, its first draw); all four at once
    froze the window for ~250 ms right after loading."""
    from qtpy.QtCore import QTimer

    if self.workers.closed:
        return
    try:
        remaining = self.layer_set().add_missing(limit=1)
    except (InputError, ValueError):
        remaining = 0  # no image, or one that cannot take them: `then` reports it
    if remaining:
        QTimer.singleShot(1, lambda: add_layers_stepwise(self, then))
    else:
        then()


def ready(self: IMedSAMWidget, loaded) -> None:
    """The model's layers exist: make the session, start embedding, say what to do next."""
    image_changed(self)
    if not self.status_text().startswith("Error"):
        self.set_status(f"Model {loaded.model_id} ready on {loaded.device}. Draw a box on "
                        f"'{self.image_layer().name}'." if self.image_layer() is not None else
                        f"Model {loaded.model_id} ready on {loaded.device}. Open an image, then draw a box.")


def serve(self: IMedSAMWidget, model, keep_cache: bool = True) -> None:
    """Make `model` (a LoadedModel handle) the one every box, session and background embedding uses: a
    new Predictor, over the same embedding cache with `keep_cache` (its keys carry the handle's
    `cache_token`, so no embedding of other weights is reused)."""
    from ..inference.crops import INTERACTIVE_TOLERANCE
    from ..inference.predictor import Predictor

    cache = self.state.predictor.cache if keep_cache and self.state.predictor is not None else None
    self.state.model = model
    self.state.predictor = Predictor(model, cache=cache, crop_tolerance=INTERACTIVE_TOLERANCE, mirror=self.mirror.value)
    for session in self.state.sessions.values():
        session.predictor = self.state.predictor


def image_changed(self: IMedSAMWidget) -> None:
    """A model and an image: create the I-MedSAM layers (ready to draw) and embed in the background."""
    if self.state.predictor is None or self.image_layer() is None:
        return
    try:
        self.session()
    except (InputError, ValueError) as exc:
        self.error(str(exc))
        return
    self.prefetch()


def reattach(self: IMedSAMWidget) -> None:
    """A dock opened again on a viewer with a model: show the fields that model came from, take the
    layer events over from the previous dock, and get the current image ready (its layers connected)."""
    from qtpy.QtCore import QTimer

    for name, value in self.state.choices.items():
        try:
            getattr(self, name).value = value
        except (ValueError, TypeError):  # a choice no longer offered: leave the field as it is
            pass
    self.mirror.value = bool(getattr(self.state.predictor, "mirror", False))
    self.version_combo.choices = version_choices(self.state.versions)
    QTimer.singleShot(0, lambda: resume(self) if not self.workers.closed else None)


def resume(self: IMedSAMWidget) -> None:
    """The reopened dock: back on the image worked on last, every image's I-MedSAM layers handled here."""
    from .layers import is_plugin_layer

    self.reset_choices()
    image = self.image_with_id(self.state.image_key)
    if image is not None:
        self._shown = image  # coming back to it is no switch: visibility and view stay as they are
        self.image_combo.value = image
    for layer in self.viewer.layers:
        if is_plugin_layer(layer):
            self.connect_layer(layer)
    image_changed(self)


def load_in_worker(source: str, device: str, adapters: str | None, corrector: str | None,
                   refiner: str | None = None):
    """Worker: import the model code (after the triton guard; torch's libraries mapped without the GIL,
    no collector pauses), load the weights, the corrector and the click refiner
    (each the file given, else the one bundled for this model). Returns (model, corrector or None).
    What the GUI thread imports next (the session and, for the boxes layer's features, pandas) is
    imported here too: a first import on the GUI thread would freeze it (pandas alone takes ~1 s)."""
    import contextlib
    import importlib
    import sys
    import warnings

    guard_triton()
    first = "torch" not in sys.modules  # later loads import nothing big: no collector games then
    with without_collector_pauses() if first else contextlib.nullcontext():  # the GUI keeps running
        preload_torch_libraries()
        for name in ("pandas", "scipy.linalg", "scipy.ndimage", "napari_imedsam.inference.session",
                     "napari_imedsam.inference.propagation", "napari_imedsam.inference.review",
                     "napari_imedsam.inference.background", "napari_imedsam.model.weights"):
            importlib.import_module(name)
    from ..model.corrector import bundled_corrector, load_corrector
    from ..model.registry import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(source, device=device, adapters=adapters)
    if refiner is not None:
        loaded = second_stage_file("click refiner", refiner, loaded.with_click_refiner)
    if corrector is not None:
        return loaded, second_stage_file("corrector", corrector,
                                         lambda path: load_corrector(path, base_sha256=loaded.weights_sha256))
    return loaded, bundled_corrector(source, loaded.weights_sha256)


def second_stage_file(field: str, path: str, load):
    """`load(path)` for the dock's corrector or click refiner field; a missing or unusable file is an
    error that names the field and the reason first, the path last (a notification shows only the
    start of a long message)."""
    if not Path(path).is_file():
        raise InputError(f"{field}: no such file: {path}")
    try:
        return load(path)
    except CheckpointError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"{field}: {reason} ({path})") from None
