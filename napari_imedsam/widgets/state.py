"""What a viewer's annotation work keeps while docks come and go: the loaded model, its adapter
versions, and one AnnotationSession per (image layer, labels layer, slicing axis).

Closing the dock and opening it again from the Plugins menu finds the same state (same model, same
undo history, same accepted slices). The session is the single owner of user edits and accepted
slices; the arrays and sets it owns outlive a session that has to be rebuilt (another slicing axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..inference.session import AnnotationSession
    from ..model.registry import LoadedModel


@dataclass
class ViewerState:
    model: LoadedModel | None = None
    predictor: Any = None
    corrector: Any = None  # the model's Dual False Corrector, when it has one
    versions: dict[str, LoadedModel] = field(default_factory=dict)  # name -> handle; "base": as loaded
    sessions: dict[tuple, AnnotationSession] = field(default_factory=dict)
    edited: dict[int, np.ndarray] = field(default_factory=dict)  # labels layer id -> user-edit mask
    accepted: dict[tuple, set] = field(default_factory=dict)  # (labels layer id, axis) -> accepted slices
    exported: dict[tuple, set] = field(default_factory=dict)
    docks: int = 0  # dock widgets attached to this viewer
    dock: Any = None  # the dock that handles this viewer's layer events (the newest one)
    choices: dict[str, Any] = field(default_factory=dict)  # the dock fields the loaded model came from
    image_key: str | None = None  # the image the dock last worked on (`layers.image_id`)


_STATES: dict[int, ViewerState] = {}


def identity(obj) -> int:
    """A stable id for a napari object: plugins receive proxies (napari's PublicOnlyProxy), a new one
    per attribute access, so the id of the object behind the proxy is used."""
    return id(getattr(obj, "__wrapped__", obj))


def state_of(viewer) -> ViewerState:
    return _STATES.setdefault(identity(viewer), ViewerState())


def forget(viewer) -> None:
    """The viewer closed: drop its state (models and sessions are freed)."""
    _STATES.pop(identity(viewer), None)


def session_for(state: ViewerState, image, labels, axis: int | None, window, rgb: bool) -> AnnotationSession:
    """The session for this image/labels/axis (created on first use), with the current model and window."""
    from ..inference.session import AnnotationSession

    key = (identity(image), identity(labels), id(labels.data), axis)
    session = state.sessions.get(key)
    if session is None:
        edited = state.edited.get(identity(labels))
        if edited is None or edited.shape != labels.data.shape:
            edited = state.edited[identity(labels)] = np.zeros(labels.data.shape, bool)
        session = AnnotationSession(state.predictor, np.asarray(image.data), labels.data, rgb=rgb, window=window,
                                    user_edited=edited, axis=axis)
        session.accepted = state.accepted.setdefault((identity(labels), axis), set())
        session.exported = state.exported.setdefault((identity(labels), axis), set())
        state.sessions[key] = session
    else:
        session.set_window(window)
    session.predictor = state.predictor
    session.corrector = state.corrector
    return session
