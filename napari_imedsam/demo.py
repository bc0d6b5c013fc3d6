"""`make demo`: napari with a CT sample, the I-MedSAM widget docked, the bundled model loaded and a
first box drawn; without a display (or with --headless) it segments sample structures and prints
Dice against their expert masks, and writes a panel PNG (image | coarse | uncertainty | refined).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .inference.boxes import box_of_mask
from .inference.windows import normalize_intensity
from .io.images import write_atomic
from .model.catalog import default_model

SAMPLE_STRUCTURES = [("ct_abdomen", "liver_000"), ("ct_abdomen", "spleen_000"), ("ct_abdomen", "aorta_000"),
                     ("ct_thorax", "heart_ventricle_left_000"), ("ct_thorax", "vertebrae_T9_000")]


def heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB 'hot' colour map (black, red, yellow, white)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255


def panel(image01: np.ndarray, result) -> np.ndarray:
    """Side-by-side RGB uint8: image with box | coarse prob | uncertainty (scaled) | refined mask overlay."""
    grey = np.repeat(image01[..., None], 3, -1) * 255 if image01.ndim == 2 else image01 * 255
    boxed = grey.copy()
    x0, y0, x1, y1 = np.round(result.box_xyxy).astype(int)
    boxed[y0:y1 + 1, [x0, x1]] = boxed[[y0, y1], x0:x1 + 1] = (0, 255, 0)
    coarse = np.repeat(result.coarse_prob[..., None], 3, -1) * 255
    scale = max(float(result.uncertainty.max()), 1e-12)
    overlay = grey.copy()
    overlay[result.refined_mask] = 0.5 * overlay[result.refined_mask] + 0.5 * np.array([255, 0, 255])
    tiles = [boxed, coarse, heat(result.uncertainty / scale), overlay]
    zoom = max(1, 384 // max(grey.shape[:2]))  # small images are enlarged (nearest) for legibility
    tiles = [np.repeat(np.repeat(t, zoom, 0), zoom, 1) for t in tiles]
    gap = np.full((tiles[0].shape[0], 6, 3), 255.0)
    row = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2], gap, tiles[3]], axis=1)
    return row.clip(0, 255).astype(np.uint8)


def headless(model: str, out: Path) -> int:
    from ._sample_data import CT_SAMPLES, load_ct_slice
    from .evaluation import dice
    from .inference.predictor import Predictor
    from .model.registry import load_model

    loaded = load_model(model)
    predictor = Predictor(loaded)
    print(f"model {loaded.model_id} ({loaded.network.config.name}, zoom {'on' if predictor.zoom else 'off'})")
    for sample, structure in SAMPLE_STRUCTURES:
        image, labels, names = load_ct_slice(CT_SAMPLES[sample])
        truth = labels == names.index(structure) + 1
        start = time.perf_counter()
        result = predictor.predict(image, box_of_mask(truth))
        elapsed = time.perf_counter() - start
        print(f"  {sample:10s} {structure:26s} Dice {dice(result.refined_mask, truth):.4f} "
              f"(coarse {dice(result.coarse_prob > 0.5, truth):.4f}), {elapsed * 1e3:4.0f} ms, "
              f"mean uncertainty in box {result.mean_uncertainty_in_box:.4f}")
        if structure == "liver_000":
            figure = out / "demo_panel.png"
            tiles = panel(normalize_intensity(image)[..., 0], result)
            write_atomic(figure, lambda tmp, t=tiles: Image.fromarray(t).save(tmp, format="PNG"))
    print(f"wrote {out / 'demo_panel.png'} (image + box | coarse probability | uncertainty | refined mask)")
    return 0


def gui(model: str, screenshot: Path | None = None, timeout_s: float = 300.0) -> int:
    """The napari demo, opened the way a user does it: the window first, then the sample, the dock from
    the plugin, the model loaded by the dock (in a worker), and a first box on the liver. With
    `screenshot`, save the window once that box is segmented, then quit."""
    import napari

    from ._sample_data import CT_SAMPLES, load_ct_slice

    viewer = napari.Viewer(title="napari-imedsam demo")
    viewer.open_sample("napari-imedsam", "ct_abdomen")
    _, dock = viewer.window.add_plugin_dock_widget("napari-imedsam", "I-MedSAM annotator")
    dock.reset_choices()
    dock.image_combo.value = viewer.layers["CT abdomen"]
    dock.model_combo.value = model
    _, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    x0, y0, x1, y1 = box_of_mask(labels == names.index("liver_000") + 1)

    def first_box() -> None:
        boxes, labels_layer, _, _ = dock.ensure_layers()
        viewer.reset_view()  # the whole slice in view
        viewer.layers.selection.active = viewer.layers[boxes.name]
        boxes.add_rectangles(np.array([[y0, x0], [y1, x1]]))  # as if drawn on the liver
        if screenshot is not None:
            _screenshot_when_segmented(viewer, viewer.layers[labels_layer.name], screenshot,
                                       time.monotonic() + timeout_s)

    started = []

    def when_loaded() -> None:
        if dock.state.model is not None and not started:
            started.append(True)
            first_box()

    dock.workers.idle.connect(when_loaded)
    dock.load_selected_model()
    napari.run()
    return 0


def _screenshot_when_segmented(viewer, labels_layer, path: Path, deadline: float) -> None:
    from qtpy.QtCore import QTimer

    def poll() -> None:
        if labels_layer.data.any() or time.monotonic() > deadline:
            path.parent.mkdir(parents=True, exist_ok=True)
            viewer.window.screenshot(path=str(path), flash=False)
            print(f"wrote {path}" if labels_layer.data.any() else f"wrote {path} (timed out before a mask)")
            viewer.close()
        else:
            QTimer.singleShot(250, poll)

    QTimer.singleShot(250, poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the bundled demo model")
    parser.add_argument("--headless", action="store_true", help="no window: print Dice on sample structures")
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="napari window: save a screenshot once the first box is segmented, then quit")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    no_display = sys.platform.startswith("linux") and not has_display
    if args.headless or no_display:
        if not args.headless:
            print("no display: running the headless demo (use a desktop session for the napari window)")
        return headless(model, args.out)
    return gui(model, args.screenshot)


if __name__ == "__main__":
    raise SystemExit(main())
