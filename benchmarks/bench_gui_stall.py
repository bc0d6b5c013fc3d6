"""napari as a user drives it: Qt event-loop stalls per phase, and box latency from mouse release to
labels drawn.

One shown napari viewer with the dock; the user's path: load the model with the dock's button (in a
fresh process, so loading imports torch too), let the displayed 512x512 slice embed, draw new boxes
and move a box with the mouse on the canvas, open the 40-slice phantom sample (every slice embeds in
the background), draw a box there, propagate it through the volume, accept slices and fine-tune.

A 5 ms QTimer records when the GUI thread gets to run; a phase's stall is its largest gap minus
5 ms (`stall_ms_idle`: the same with nothing running, the machine's own noise floor). A box's time
runs from the mouse release on the canvas to the first canvas paint after the labels layer got the
result (the 30 ms debounce included). Needs a display:

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_stall.py [--model demo] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from napari.qt import get_qapp
from qtpy.QtCore import QEvent, QEventLoop, QObject, QPoint, Qt, QTimer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gui.user import _send, canvas_widget, drag, to_canvas  # noqa: E402

TICK_MS = 5


class Monitor(QObject):
    """Ticks of the GUI thread and paint events of the canvas, with timestamps."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[float] = []
        self.paints: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()
        self.canvas = None

    def watch(self, viewer) -> None:
        self.canvas = canvas_widget(viewer)
        self.canvas.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Paint:
            self.paints.append(time.perf_counter())
        return False

    def spin(self, until, timeout_s: float = 600.0) -> float:
        """Run the event loop until `until()` (polled every tick) or the timeout; returns seconds."""
        start = time.perf_counter()
        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(TICK_MS)
        poll.timeout.connect(lambda: loop.quit() if until() or time.perf_counter() - start > timeout_s else None)
        poll.start()
        if not until():
            loop.exec()
        poll.stop()
        return time.perf_counter() - start

    def drawn(self) -> None:
        """Wait for the next canvas paint (what was just added is on screen)."""
        now = time.perf_counter()
        self.spin(lambda: any(p > now for p in self.paints), 30)

    def stall_ms(self, since: float, until: float | None = None) -> float:
        until = until if until is not None else time.perf_counter()
        stamps = [since] + [t for t in self.ticks if since <= t <= until] + [until]
        return max(0.0, float(np.max(np.diff(stamps))) * 1e3 - TICK_MS)


class StallSampler:
    """`--profile-stalls`: while the GUI thread's ticks are late by over `threshold_ms`, sample its
    Python stack every 2 ms from another thread; reports each phase's longest stall, frame by frame."""

    def __init__(self, monitor: Monitor, threshold_ms: float = 20.0) -> None:
        self.monitor, self.threshold = monitor, threshold_ms / 1e3
        self.phase = "start"
        self.episodes: dict[str, list[list[str]]] = {}  # phase -> stalls -> sampled stacks
        self.main = threading.main_thread().ident
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        late_since = None
        while True:
            time.sleep(0.002)
            ticks = self.monitor.ticks
            last = ticks[-1] if ticks else None
            if last is None or time.perf_counter() - last <= self.threshold:
                continue
            frame = sys._current_frames().get(self.main)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-8:]
            where = " <- ".join(f"{f.name}@{Path(f.filename).name}:{f.lineno}" for f in reversed(stack))
            episodes = self.episodes.setdefault(self.phase, [])
            if late_since != (self.phase, last) or not episodes:
                late_since = (self.phase, last)
                episodes.append([])
            episodes[-1].append(where)

    def report(self, top: int = 5) -> None:
        for phase, episodes in self.episodes.items():
            longest = max(episodes, key=len)
            print(f"longest GUI stall during {phase}: ~{2 * len(longest) + 20} ms; where (ms sampled):")
            for where, count in Counter(longest).most_common(top):
                print(f"  {2 * count:5d}  {where[:360]}")


def release_box(viewer, layer, start_rc, end_rc, monitor: Monitor, labels, steps: int = 6) -> float:
    """Drag with the mouse from `start_rc` to `end_rc` (layer data coordinates); returns ms from the
    release to the first canvas paint after the labels layer received the result."""
    widget = canvas_widget(viewer)
    start, end = to_canvas(viewer, layer, start_rc), to_canvas(viewer, layer, end_rc)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _send(widget, QEvent.Type.MouseMove, start, none, none)
    _send(widget, QEvent.Type.MouseButtonPress, start, left, left)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        point = QPoint(int(round(start.x() + t * (end.x() - start.x()))),
                       int(round(start.y() + t * (end.y() - start.y()))))
        _send(widget, QEvent.Type.MouseMove, point, none, left)
    got: list[float] = []
    labels.events.set_data.connect(lambda event=None: got.append(time.perf_counter()))
    released = time.perf_counter()
    _send(widget, QEvent.Type.MouseButtonRelease, end, left, none)
    monitor.spin(lambda: bool(got) and any(p > got[0] for p in monitor.paints), 120)
    labels.events.set_data.disconnect()
    drawn = next((p for p in monitor.paints if got and p > got[0]), time.perf_counter())
    return (drawn - released) * 1e3


def napari_floor(viewer, layer, monitor: Monitor, n: int) -> float:
    """napari's own stall for the same mouse-drawn boxes, with a labels write and refresh for each
    (temporary layers, no plugin): the floor the plugin's `stall_ms_box` adds to."""
    labels = viewer.add_labels(np.zeros(layer.data.shape, np.int32), name="floor labels")
    boxes = viewer.add_shapes(ndim=2, name="floor boxes", edge_color="lime", face_color="transparent",
                              features={"label": np.zeros(0, int)}, feature_defaults={"label": 0},
                              text={"string": "{label}", "color": "yellow"})
    viewer.reset_view()
    viewer.layers.selection.active = boxes
    boxes.mode = "add_rectangle"
    monitor.spin(lambda: False, 0.5)
    start = time.perf_counter()
    for i in range(n):
        d = 40 * (i % 3) - 40
        drag(viewer, to_canvas(viewer, layer, (150 + d, 150 + d)), to_canvas(viewer, layer, (300 + d, 300 + d)), 6)
        monitor.spin(lambda: False, 0.2)
        labels.data[150 + d:300 + d, 150 + d:300 + d] = i + 1
        labels.refresh()
        monitor.spin(lambda: False, 0.2)
    stall = monitor.stall_ms(start)
    viewer.layers.remove(boxes)
    viewer.layers.remove(labels)
    monitor.spin(lambda: False, 0.5)
    return stall


FIT_SCRIPT = """
import sys, warnings
import torch
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import save_model
from src_train.fit import EncodedExample, fit_decoder
torch.set_num_threads(1)
warnings.simplefilter("ignore")
loaded = load_model(sys.argv[1])
predictor = Predictor(loaded)
examples = [EncodedExample(predictor.embed(i), m) for i, m in ellipse_phantoms(4, size=256, seed=1)]
fit_decoder(loaded.network, examples, steps=int(sys.argv[3]), seed=0)
save_model(loaded.network, sys.argv[2], {"note": "bench_gui_stall: decoder fitted on ellipses"})
"""


def config_model_file(config: str, folder: Path, steps: int = 100) -> Path:
    """A model file for a bare config (e.g. `vit_b`: a whole-slice model with no weights to download), its
    decoder fitted briefly on ellipses, written by a subprocess so this process imports no torch yet."""
    import subprocess

    path = folder / f"{config}.safetensors"
    subprocess.run([sys.executable, "-c", FIT_SCRIPT, config, str(path), str(steps)], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry name, model file, or a config (vit_b: fitted "
                        "briefly on ellipses first); default: the default model")
    parser.add_argument("--boxes", type=int, default=6, help="new boxes and box moves to time")
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile-stalls", action="store_true", help="print where the GUI thread stalled")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    import napari

    from napari_imedsam.inference.boxes import box_of_mask
    from napari_imedsam.io.phantoms import ellipse_phantom
    from napari_imedsam.model.catalog import default_model
    from napari_imedsam.widgets.dock import IMedSAMWidget

    model = args.model or default_model()
    get_qapp()
    viewer = napari.Viewer(show=True)
    dock = IMedSAMWidget(viewer)
    viewer.window.add_dock_widget(dock)
    image, mask = ellipse_phantom(512, np.random.default_rng(5))
    layer = viewer.add_image(image, name="slice")
    dock.reset_choices()
    monitor = Monitor()
    monitor.watch(viewer)
    sampler = StallSampler(monitor) if args.profile_stalls else None

    def phase(name: str) -> None:
        if sampler is not None:
            sampler.phase = name

    monitor.spin(lambda: False, 2.0)
    row: dict = {"model": model, "image": "512x512"}
    t0 = time.perf_counter()
    monitor.spin(lambda: False, 2.0)
    row["stall_ms_idle"] = monitor.stall_ms(t0)

    phase("load")
    # ---- load (the dock's button: a worker imports torch and reads the weights) ----
    if model in dock.model_combo.choices:
        dock.model_combo.value = model
    else:
        from napari_imedsam.widgets.dock import CHECKPOINT

        dock.model_combo.value = CHECKPOINT
        path = Path(model) if Path(model).is_file() else config_model_file(model, Path(tempfile.mkdtemp()))
        dock.checkpoint.value = str(path)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dock.load_selected_model()
        row["load_s"] = monitor.spin(lambda: dock.state.model is not None and not dock.workers.is_busy(), 600)
    monitor.drawn()  # the plugin's new layers on screen
    row["stall_ms_load"] = monitor.stall_ms(t0)
    predictor = dock.state.predictor
    row["zoom"] = bool(predictor.zoom)

    phase("embed")
    # ---- embedding of the displayed slice (whole-slice models; zoom models encode per box) ----
    t0 = time.perf_counter()
    row["embed_slice_s"] = monitor.spin(lambda: not dock.workers.is_busy("prefetch"), 600)
    stall_embed = monitor.stall_ms(t0)

    phase("box")
    # ---- boxes: new objects, then one box moved by the mouse ----
    boxes, labels = dock.ensure_layers()[:2]
    boxes, labels = viewer.layers[boxes.name], viewer.layers[labels.name]
    viewer.reset_view()
    viewer.layers.selection.active = boxes
    boxes.mode = "add_rectangle"
    monitor.spin(lambda: False, 0.5)
    x0, y0, x1, y1 = box_of_mask(mask)
    t_box = time.perf_counter()
    new_ms, move_ms = [], []
    for i in range(args.boxes):  # a new object each time, placed so a zoom model needs a new crop
        d = 40 * (i % 3) - 40
        new_ms.append(release_box(viewer, layer, (y0 + d, x0 + d), (y1 + d, x1 + d), monitor, labels))
        dock.wait_until_idle()
    boxes.mode = "select"
    for i in range(args.boxes):  # the last box nudged 3 px at a time
        boxes.selected_data = {len(boxes.data) - 1}
        corners = np.asarray(boxes.data[-1])
        centre = corners.mean(axis=0)
        step = 3 * (1 if i % 4 < 2 else -1)
        move_ms.append(release_box(viewer, layer, tuple(centre), (centre[0] + step, centre[1] + step), monitor,
                                   labels, steps=3))
        dock.wait_until_idle()
    stall_box = monitor.stall_ms(t_box)
    row.update(box_new_ms_p50=float(np.median(new_ms)), box_move_ms_p50=float(np.median(move_ms)),
               box_new_ms=[round(v) for v in new_ms], box_move_ms=[round(v) for v in move_ms])
    row["crop_reuse_rate"] = predictor.crops.reuse_rate if predictor.zoom else None

    # ---- the 40-slice phantom: background embedding, a box, propagation ----
    for name in [lay.name for lay in viewer.layers if lay.name.startswith("I-MedSAM")]:
        viewer.layers.remove(name)  # the slice's layers; the volume gets its own
    phase("open")
    t0 = time.perf_counter()
    viewer.open_sample("napari-imedsam", "phantom_3d")
    volume = viewer.layers["phantom CT (HU)"]
    truth = viewer.layers["phantom truth"].data > 0
    dock.image_combo.value = volume  # napari adds the plugin's layers for it; background embedding starts
    dock.go_to_slice(20)
    monitor.drawn()
    row["stall_ms_open_volume"] = monitor.stall_ms(t0)
    phase("embed")
    t0 = time.perf_counter()
    row["embed_volume_s"] = monitor.spin(lambda: not dock.workers.is_busy("prefetch"), 900)
    row["stall_ms_embed"] = max(stall_embed, monitor.stall_ms(t0))
    dock.ensure_layers()
    vboxes, vlabels = viewer.layers["I-MedSAM boxes"], viewer.layers["I-MedSAM labels"]
    viewer.reset_view()
    viewer.layers.selection.active = vboxes
    vboxes.mode = "add_rectangle"
    monitor.spin(lambda: False, 0.5)
    phase("box")
    t_vbox = time.perf_counter()
    bx0, by0, bx1, by1 = box_of_mask(truth[20])
    row["box_volume_ms"] = release_box(viewer, volume, (20, by0, bx0), (20, by1, bx1), monitor, vlabels)
    dock.wait_until_idle()
    stall_box = max(stall_box, monitor.stall_ms(t_vbox))
    row["stall_ms_box"] = stall_box
    vlabels.selected_label = 1
    phase("propagate")
    t0 = time.perf_counter()
    dock.propagate()
    row["propagate_40_s"] = monitor.spin(lambda: not dock.workers.is_busy("propagate"), 900)
    row["stall_ms_propagate"] = monitor.stall_ms(t0)
    filled = vlabels.data == 1
    row["propagate_dice"] = float(2 * (filled & truth).sum() / max(1, filled.sum() + truth.sum()))

    phase("finetune")
    # ---- accept slices, one-click fine-tuning ----
    dock.workdir.value = tempfile.mkdtemp()
    for z in (14, 17, 20, 23, 26):
        dock.go_to_slice(z)
        dock.accept_slice()
    monitor.spin(lambda: False, 1.0)  # napari re-slices after the scrolling
    dock.steps.value = args.finetune_steps
    t0 = time.perf_counter()
    dock.tuner.start()
    row["finetune_s"] = monitor.spin(lambda: not dock.workers.is_busy(), 900)
    row["stall_ms_finetune"] = monitor.stall_ms(t0)
    row["finetune_status"] = dock.status_text()[:120]
    row["stall_ms_max"] = max(row[f"stall_ms_{p}"] for p in ("load", "embed", "box", "propagate", "finetune"))
    # napari's own floor, last: text drawn before torch loads can crash llvmpipe (see the README)
    phase("napari")
    for name in sorted((lay.name for lay in viewer.layers if lay is not layer), key=lambda n: "I-MedSAM" not in n):
        viewer.layers.remove(name)  # the plugin's layers first
    row["stall_ms_napari_boxes"] = napari_floor(viewer, layer, monitor, args.boxes)

    print(f"napari, model {model} ({'zoom' if row['zoom'] else 'whole-slice'}), 512x512 slice and the 40-slice "
          f"phantom; worst GUI stall per phase (idle noise floor {row['stall_ms_idle']:.0f} ms; napari alone, the "
          f"same boxes drawn without the plugin: {row['stall_ms_napari_boxes']:.0f} ms):")
    for phase in ("load", "embed", "box", "propagate", "finetune"):
        print(f"  {phase:10s} {row[f'stall_ms_{phase}']:7.0f} ms")
    print(f"  box -> labels drawn: new {row['box_new_ms_p50']:.0f} ms, moved {row['box_move_ms_p50']:.0f} ms "
          f"(median); on the volume {row['box_volume_ms']:.0f} ms; propagation over 40 slices "
          f"{row['propagate_40_s']:.1f} s (Dice {row['propagate_dice']:.3f})")
    if sampler is not None:
        sampler.report()
    if args.json:
        print(json.dumps(row))
    dock.shutdown()
    viewer.close()


if __name__ == "__main__":
    main()
