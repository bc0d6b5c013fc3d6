"""Drive napari the way a person does: mouse presses, moves and releases on the canvas widget, keys.

Only public Qt API is used to find the canvas (the vispy OpenGL widget inside the viewer's window);
positions are worked out from napari's camera (centre, zoom) and the layer's data-to-world transform.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication, QWidget


def canvas_widget(viewer) -> QWidget:
    """The vispy canvas' Qt widget of this viewer's window (the biggest visible GL widget)."""
    candidates = [w for w in QApplication.allWidgets()
                  if type(w).__name__.startswith("CanvasBackend") and w.isVisible()]
    if not candidates:
        raise RuntimeError("no visible napari canvas: create the viewer with show=True")
    return max(candidates, key=lambda w: w.width() * w.height())


def to_canvas(viewer, layer, data_point) -> QPoint:
    """A point in `layer`'s data coordinates -> canvas widget pixels (2D display)."""
    full = np.zeros(layer.ndim)
    full[-len(data_point):] = data_point
    world = np.asarray(layer.data_to_world(full))
    world_full = np.asarray(viewer.dims.point, float).copy()
    world_full[-layer.ndim:] = world
    rows_axis, cols_axis = viewer.dims.displayed[-2:]
    center = np.asarray(viewer.scene.camera.center)[-2:]
    widget = canvas_widget(viewer)
    zoom = viewer.scene.camera.zoom
    x = (world_full[cols_axis] - center[1]) * zoom + widget.width() / 2
    y = (world_full[rows_axis] - center[0]) * zoom + widget.height() / 2
    return QPoint(int(round(x)), int(round(y)))


def _send(widget: QWidget, kind: QEvent.Type, pos: QPoint, button, buttons, modifiers=Qt.KeyboardModifier.NoModifier):
    local = QPointF(pos)
    event = QMouseEvent(kind, local, QPointF(widget.mapToGlobal(pos)), button, buttons, modifiers)
    QApplication.sendEvent(widget, event)
    QApplication.processEvents()


def drag(viewer, start: QPoint, end: QPoint, steps: int = 8, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    """Press the left button at `start`, move in `steps`, release at `end`."""
    widget = canvas_widget(viewer)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(widget, QEvent.Type.MouseMove, start, none, none, modifiers)
    _send(widget, QEvent.Type.MouseButtonPress, start, left, left, modifiers)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        point = QPoint(int(round(start.x() + t * (end.x() - start.x()))),
                       int(round(start.y() + t * (end.y() - start.y()))))
        _send(widget, QEvent.Type.MouseMove, point, none, left, modifiers)
    _send(widget, QEvent.Type.MouseButtonRelease, end, left, none, modifiers)


def drag_box(viewer, layer, corner_rc0, corner_rc1) -> None:
    """Draw a rectangle with the mouse between two (row, col) corners in `layer`'s data coordinates
    (the shapes layer must be selected and in rectangle mode)."""
    drag(viewer, to_canvas(viewer, layer, corner_rc0), to_canvas(viewer, layer, corner_rc1))


def stroke(viewer, layer, points_rc) -> None:
    """A brush stroke through (row, col) points (labels layer in paint or erase mode)."""
    widget = canvas_widget(viewer)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    pixels = [to_canvas(viewer, layer, p) for p in points_rc]
    _send(widget, QEvent.Type.MouseMove, pixels[0], none, none)
    _send(widget, QEvent.Type.MouseButtonPress, pixels[0], left, left)
    for point in pixels[1:]:
        _send(widget, QEvent.Type.MouseMove, point, none, left)
    _send(widget, QEvent.Type.MouseButtonRelease, pixels[-1], left, none)


def press_key(viewer, key: str) -> None:
    """Type a key combination on the canvas ('Shift-Y'), as napari's key bindings receive it."""
    from qtpy.QtTest import QTest

    widget = canvas_widget(viewer)
    parts = key.split("-")
    modifiers = Qt.KeyboardModifier.NoModifier
    for part in parts[:-1]:
        modifiers |= {"Shift": Qt.KeyboardModifier.ShiftModifier, "Control": Qt.KeyboardModifier.ControlModifier,
                      "Ctrl": Qt.KeyboardModifier.ControlModifier, "Alt": Qt.KeyboardModifier.AltModifier}[part]
    QTest.keyClick(widget, getattr(Qt.Key, f"Key_{parts[-1].upper()}"), modifiers)
    QApplication.processEvents()


def move_mouse(viewer, point: QPoint) -> None:
    """Hover the canvas at `point` (napari updates the cursor position)."""
    widget = canvas_widget(viewer)
    _send(widget, QEvent.Type.MouseMove, point, Qt.MouseButton.NoButton, Qt.MouseButton.NoButton)


def click(viewer, layer, point_rc, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    """A left click at a (row, col) point in `layer`'s data coordinates."""
    widget = canvas_widget(viewer)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    pos = to_canvas(viewer, layer, point_rc)
    _send(widget, QEvent.Type.MouseMove, pos, none, none, modifiers)
    _send(widget, QEvent.Type.MouseButtonPress, pos, left, left, modifiers)
    _send(widget, QEvent.Type.MouseButtonRelease, pos, left, none, modifiers)
