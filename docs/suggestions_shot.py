"""The README's suggestions screenshot: the CT thorax sample, the bundled model with its Dual False
Corrector (`bundled`) or one you trained (a file), mouse-drawn boxes on the left ventricle and the
aorta, in the default view: the suggestions (blue: remove, green: add) over the uncertainty heatmap.
Needs a display:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/suggestions_shot.py bundled|CORRECTOR OUT.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_imedsam.inference.boxes import box_of_mask  # noqa: E402
from napari_imedsam.model.corrector import chosen_corrector  # noqa: E402
from napari_imedsam.model.registry import load_model  # noqa: E402
from napari_imedsam.widgets.corrections import SUGGESTIONS  # noqa: E402
from tests.gui.user import drag_box  # noqa: E402


def main(corrector_file: str, out: str) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-imedsam", "ct_thorax")
    image, truth = viewer.layers["CT thorax"], viewer.layers["CT thorax expert masks"]
    names = {name: value for value, name in truth.metadata["structures"].items()}
    truth.visible = False
    _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    model = load_model("demo")
    dock.set_model(model, chosen_corrector(corrector_file, "demo", model.weights_sha256))
    dock.reset_choices()
    dock.image_combo.value = image
    boxes, _, _, _ = dock.ensure_layers()
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers[boxes.name]
    for structure in ("heart_ventricle_left_000", "aorta_000"):
        x0, y0, x1, y1 = box_of_mask(truth.data == names[structure])
        drag_box(viewer, image, (y0, x0), (y1, x1))
        dock.wait_until_idle()
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.01)
    shown = viewer.layers[SUGGESTIONS].data
    print(f"suggested: remove {int((shown == 1).sum())} px, add {int((shown == 2).sum())} px")
    viewer.window.screenshot(path=out, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
