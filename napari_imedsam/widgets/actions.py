"""Keyboard actions, registered with napari's action manager: users rebind them in
Preferences > Shortcuts like napari's own. The default keys collide with none of napari's
defaults (checked by a test against `napari.utils.shortcuts.default_shortcuts`)."""

from __future__ import annotations

from collections.abc import Callable

from napari.components import ViewerModel
from napari.settings import get_settings
from napari.utils.action_manager import action_manager

from .state import identity

# action name -> (default key, description, what the dock does)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "napari-imedsam:toggle_uncertainty": ("Shift-U", "I-MedSAM: show or hide the uncertainty heatmap",
                                          "toggle_uncertainty"),
    "napari-imedsam:next_uncertain_slice": ("Shift-N", "I-MedSAM: go to the slice most likely to be wrong",
                                            "next_uncertain_slice"),
    "napari-imedsam:accept_slice": ("Shift-Y", "I-MedSAM: accept the displayed slice's labels", "accept_slice"),
    "napari-imedsam:propagate": ("Shift-G", "I-MedSAM: propagate the selected object through the volume",
                                 "propagate"),
    "napari-imedsam:undo": ("Shift-Z", "I-MedSAM: undo the last box or propagation result", "undo"),
    "napari-imedsam:accept_suggestion": ("Shift-S", "I-MedSAM: accept the corrector's suggestion under the cursor",
                                         "accept_suggestion"),
    "napari-imedsam:accept_all_suggestions": ("Shift-D", "I-MedSAM: accept every suggestion on the slice",
                                              "accept_all_suggestions"),
    "napari-imedsam:dismiss_suggestions": ("Shift-X", "I-MedSAM: dismiss the suggestions on the slice",
                                           "dismiss_suggestions"),
    "napari-imedsam:positive_clicks": ("Shift-C", "I-MedSAM: click where the mask misses the object",
                                       "positive_clicks"),
    "napari-imedsam:negative_clicks": ("Shift-E", "I-MedSAM: click where the mask covers too much",
                                       "negative_clicks"),
    "napari-imedsam:draw_boxes": ("Shift-B", "I-MedSAM: back to drawing boxes", "draw_boxes"),
}
_DOCKS: dict[int, object] = {}  # viewer id -> the dock that handles its keys


def _command(method: str) -> Callable:
    def run(viewer: ViewerModel) -> None:
        dock = _DOCKS.get(identity(viewer))
        if dock is not None:
            getattr(dock, method)()
    run.__name__ = method
    return run


def register(viewer, dock) -> None:
    """Route this viewer's I-MedSAM keys to `dock` (registering the actions once per process)."""
    _DOCKS[identity(viewer)] = dock
    chosen = get_settings().shortcuts.shortcuts
    for name, (key, description, method) in ACTIONS.items():
        action_manager.register_action(name, _command(method), description, ViewerModel)
        if not chosen.get(name):  # a key the user chose in Preferences is bound by napari itself
            action_manager.bind_shortcut(name, key)


def unregister(viewer, dock) -> None:
    if _DOCKS.get(identity(viewer)) is dock:
        del _DOCKS[identity(viewer)]


def shortcut(name: str) -> str:
    """The key currently bound to an action (for button labels)."""
    keys = get_settings().shortcuts.shortcuts.get(name) or [ACTIONS[name][0]]
    return str(keys[0])
