"""Run as a fresh process (tests/gui/test_plugin_menu.py): what a user does after typing `napari`.

The window is shown first; only then is the dock opened through the Plugins menu, the model loaded
with the dock's button and a box dragged with the mouse. Nothing here imports torch before the
window exists, as in a real napari session (that order crashed napari under Mesa before).
"""

from __future__ import annotations

import sys
import time

import napari
from qtpy.QtWidgets import QApplication, QMainWindow, QMenu

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.boxes import box_of_mask
from tests.gui.user import drag_box


def wait(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    return condition()


def menu_action(window: QMainWindow, text: str):
    menus = [a.menu() for a in window.menuBar().actions() if a.menu()]
    while menus:
        menu: QMenu = menus.pop()
        for action in menu.actions():
            if action.menu():
                menus.append(action.menu())
            elif text in action.text().replace("&", ""):
                return action
    return None


def main(model: str) -> int:
    viewer = napari.Viewer(show=True)
    wait(lambda: False, 0.5)  # the window is up and its GL canvas drawn
    viewer.open_sample("napari-imedsam", "ct_abdomen")
    window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible())
    action = menu_action(window, "I-MedSAM annotator")
    assert action is not None, "no 'I-MedSAM annotator' in the Plugins menu"
    action.trigger()
    dock = next(w for w in viewer.window.dock_widgets.values() if type(w).__name__ == "IMedSAMWidget")
    dock.reset_choices()
    dock.model_combo.value = model
    dock.load_button.native.click()
    assert wait(lambda: dock.state.model is not None, 600), f"model not loaded: {dock.status_text()}"
    image = viewer.layers["CT abdomen"]
    boxes, labels, _, _ = dock.ensure_layers()
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[boxes.name]
    _, truth, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    liver = truth == names.index("liver_000") + 1
    x0, y0, x1, y1 = box_of_mask(liver)
    start = time.perf_counter()
    drag_box(viewer, image, (y0, x0), (y1, x1))
    assert wait(lambda: (viewer.layers[labels.name].data == 1).any() and not dock.workers.is_busy("box"), 300), \
        f"no mask: {dock.status_text()}"
    mask = viewer.layers[labels.name].data == 1
    dice = 2 * (mask & liver).sum() / (mask.sum() + liver.sum())
    print(f"liver Dice {dice:.3f}, mouse release to mask {time.perf_counter() - start:.2f} s; "
          f"triton imported: {'triton' in sys.modules}", flush=True)
    viewer.close()
    return 0 if dice > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo"))
