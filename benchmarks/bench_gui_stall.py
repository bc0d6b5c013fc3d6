"""Worst Qt event-loop stall in napari while the widget embeds a slice and while boxes are edited.

A 5 ms QTimer records when the GUI thread gets to run; the largest gap minus 5 ms is the worst
stall a user could feel (a frozen UI shows up as a gap of seconds). Needs a display:

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_stall.py [--model vit_b] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from napari.qt import get_qapp
from qtpy.QtCore import QEventLoop, QTimer


def run_event_loop(seconds: float, until=None) -> list[float]:
    """Spin the Qt loop for `seconds` (or until `until()` is true), returning tick timestamps."""
    stamps: list[float] = []
    ticker = QTimer()
    ticker.setInterval(5)
    ticker.timeout.connect(lambda: stamps.append(time.perf_counter()))
    ticker.start()
    loop = QEventLoop()
    deadline = time.perf_counter() + seconds
    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(lambda: loop.quit() if time.perf_counter() > deadline or (until and until()) else None)
    poll.start()
    loop.exec()
    ticker.stop()
    poll.stop()
    return stamps


def worst_stall_ms(stamps: list[float]) -> float:
    return max(0.0, float(np.max(np.diff(stamps))) * 1e3 - 5.0) if len(stamps) > 1 else float("nan")


def measure_training_stalls(loaded, seconds: float = 20.0) -> dict:
    """Worst GUI stall while the same decoder-mode fine-tuning runs in a thread worker, then in a
    subprocess (`imedsam train`), each for `seconds`."""
    import copy
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from napari.qt.threading import create_worker

    from napari_imedsam.io.export import ExportSlice, export_slices
    from napari_imedsam.io.phantoms import ellipse_phantoms
    from src_train.data import load_export
    from src_train.points import box_of_mask
    from src_train.trainer import TrainOptions, train

    folder = Path(tempfile.mkdtemp())
    export_slices(folder / "data", [ExportSlice(i, m.astype(np.int32), {1: box_of_mask(m)})
                                    for i, m in ellipse_phantoms(12, size=256)])
    samples = load_export(folder / "data")
    options = TrainOptions(mode="decoder", epochs=100_000, max_seconds=seconds)
    done = []
    worker = create_worker(train, copy.deepcopy(loaded), samples, options, folder / "thread")
    worker.finished.connect(lambda: done.append(True))
    worker.start()
    thread_stamps = run_event_loop(seconds + 60, until=lambda: bool(done))
    model_file = folder / "model.safetensors"
    from napari_imedsam.model.weights import save_model

    save_model(loaded.network, model_file, {"note": "benchmark"})
    process = subprocess.Popen([sys.executable, "-m", "napari_imedsam.cli", "train", "--model", str(model_file),
                                "--data", str(folder / "data"), "--out", str(folder / "process"), "--epochs",
                                "100000", "--max-seconds", str(seconds), "--device", "cpu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_stamps = run_event_loop(seconds + 60, until=lambda: process.poll() is not None)
    return {"train_seconds": seconds, "worst_stall_training_thread_ms": worst_stall_ms(thread_stamps),
            "worst_stall_training_subprocess_ms": worst_stall_ms(process_stamps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", help="config or checkpoint (default: vit_b architecture)")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--training", action="store_true", help="also compare fine-tuning in a thread vs a process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import napari

    from napari_imedsam.io.phantoms import ellipse_phantom
    from napari_imedsam.model.registry import load_model
    from napari_imedsam.widgets.dock import IMedSAMWidget
    from src_train.points import box_of_mask

    get_qapp()
    viewer = napari.Viewer(show=True)
    widget = IMedSAMWidget(viewer)
    viewer.window.add_dock_widget(widget)
    image, mask = ellipse_phantom(512, np.random.default_rng(5))
    viewer.add_image(image, name="slice")
    widget.reset_choices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(args.model, input_size=args.input_size)
    widget.set_model(loaded)  # starts embedding the current slice in a worker

    start = time.perf_counter()
    stamps = run_event_loop(60, until=lambda: len(widget.predictor.cache) > 0)
    embed_s = time.perf_counter() - start
    embed_stall = worst_stall_ms(stamps)

    x0, y0, x1, y1 = box_of_mask(mask)
    boxes = widget.ensure_layers()[0]
    labels = viewer.layers["I-MedSAM labels"]
    latencies = []
    box_stamps: list[float] = []
    for step in range(8):  # a user adjusting the box: each edit lands as one change
        shift = 2 * step
        corners = np.array([[y0 + shift, x0], [y1 + shift, x1]], float)
        before = labels.data.copy()
        edit_time = time.perf_counter()
        if step == 0:
            boxes.add_rectangles(corners)
        else:
            boxes.data = [np.array([[y0 + shift, x0], [y0 + shift, x1], [y1 + shift, x1], [y1 + shift, x0]], float)]
        box_stamps += run_event_loop(30, until=lambda b=before: widget._box_worker is None
                                     and widget._pending_box is None and not np.array_equal(labels.data, b))
        latencies.append(time.perf_counter() - edit_time)
    box_stall = worst_stall_ms(box_stamps)
    training = measure_training_stalls(loaded) if args.training else {}
    row = {"model": args.model, "input_size": loaded.network.config.encoder.img_size, "image": "512x512",
           "embedding_s": embed_s, "worst_stall_during_embedding_ms": embed_stall,
           "box_to_labels_median_s": float(np.median(latencies)), "worst_stall_during_box_edits_ms": box_stall,
           "debounce_ms": widget._debounce.interval(), **training}
    print(f"napari event loop, {args.model} at {row['input_size']} px, 512x512 slice:")
    print(f"  embedding in a worker took {embed_s:.2f} s; worst GUI stall meanwhile {embed_stall:.0f} ms")
    print(f"  8 box edits: box -> labels {row['box_to_labels_median_s'] * 1e3:.0f} ms median "
          f"(incl. {row['debounce_ms']} ms debounce); worst GUI stall {box_stall:.0f} ms")
    if training:
        print(f"  fine-tuning (decoder mode, {training['train_seconds']:.0f} s) in a thread worker: worst stall "
              f"{training['worst_stall_training_thread_ms']:.0f} ms; in a subprocess: "
              f"{training['worst_stall_training_subprocess_ms']:.0f} ms")
    if args.json:
        print(json.dumps(row))
    viewer.close()


if __name__ == "__main__":
    main()
