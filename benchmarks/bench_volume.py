"""Whole volumes in bounded memory, revisits, crop reuse and a 4096x4096 image; headless (no napari).

- A CT-like 512x512x200 volume (int16 HU): every slice embedded in the background, nearest the
  displayed slice first, while a simulated user draws a box every second on slices already embedded
  (whole-slice models): `embed_all_s`, `cache_rss_mb` (embeddings held in RAM; the rest is spilled to
  disk as float16), `revisit_ms_p50` (box -> mask written to the labels, on a slice embedded earlier:
  from memory or from disk).
- Zoom models (which encode box crops, not slices): a box and five nudges on 20 slices;
  `crop_reuse_rate` and box times with a new crop and with a reused one.
- A 4096x4096 image: the encoder gets a downsampled copy (its input is 256-1024 px whatever the
  image), the INR decodes the box at full resolution: first box, moved box, and the part that runs
  on the GUI thread (writing the labels and maps), against the same box on a 512x512 copy.

    python benchmarks/bench_volume.py [--model demo] [--slices 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import warnings

import numpy as np
import psutil
import torch

from napari_imedsam.inference.background import BackgroundEmbedder
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.crops import INTERACTIVE_TOLERANCE
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.session import AnnotationSession
from napari_imedsam.inference.threads import use_compute_threads
from napari_imedsam.inference.windows import IntensityWindow
from napari_imedsam.model.catalog import default_model
from napari_imedsam.model.registry import load_model

WINDOW = IntensityWindow("window", level=40, width=400)
MB = 2**20


def ct_slice(z: int, depth: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Slice `z` of a CT-like volume (int16 HU): body, an organ tapering at both ends, a lesion inside."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((yy - 0.5) / 0.45) ** 2 + ((xx - 0.5) / 0.47) ** 2 <= 1
    t = (z - depth / 2) / (0.4 * depth)
    organ = ((yy - 0.45) / 0.22) ** 2 + ((xx - 0.58) / 0.28) ** 2 <= max(0.0, 1 - t * t)
    lesion = organ & (((yy - 0.5) / 0.06) ** 2 + ((xx - 0.62) / 0.06) ** 2 <= max(0.0, 1 - (t / 0.3) ** 2))
    hu = np.where(body, 40.0, -1000.0) + np.where(organ, 80.0, 0.0) + np.where(lesion, 80.0, 0.0)
    hu += rng.normal(0, 15, (size, size))
    return hu.astype(np.int16), organ


def ct_volume(depth: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    volume, organ = np.empty((depth, size, size), np.int16), np.zeros((depth, size, size), bool)
    for z in range(depth):
        volume[z], organ[z] = ct_slice(z, depth, size, rng)
    return volume, organ


def timed_box(session: AnnotationSession, z: int | None, box: np.ndarray) -> tuple[float, float]:
    """(ms for box -> mask written to the labels, ms of that spent writing: the GUI thread's share)."""
    start = time.perf_counter()
    result = session.predict(z, box, 1)
    written = time.perf_counter()
    session.apply(result)
    session.slice_maps(z)
    end = time.perf_counter()
    return (end - start) * 1e3, (end - written) * 1e3


def whole_slice_volume(predictor: Predictor, depth: int, size: int) -> dict:
    volume, organ = ct_volume(depth, size)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    session = AnnotationSession(predictor, volume, np.zeros(volume.shape, np.int32), window=WINDOW)
    busy = threading.Event()
    embedder = BackgroundEmbedder(session, center=depth // 2, busy=busy.is_set)
    done: list[int | None] = []

    def background() -> None:
        use_compute_threads(background=True)
        done.extend(embedder.run())

    start = time.perf_counter()
    thread = threading.Thread(target=background)
    thread.start()
    during = []
    rng = np.random.default_rng(1)
    while thread.is_alive():  # the user: a box every second on a slice already embedded
        time.sleep(1.0)
        ready = [z for z in list(done) if organ[z].any()]
        if ready:
            z = int(rng.choice(ready))
            busy.set()
            during.append(timed_box(session, z, box_of_mask(organ[z]))[0])
            busy.clear()
    embed_all = time.perf_counter() - start
    store = predictor.cache
    row = {"slices": depth, "embed_all_s": embed_all, "embed_per_slice_s": embed_all / depth,
           "cache_rss_mb": store.memory_used / MB, "cache_disk_mb": store.disk_used / MB,
           "rss_growth_mb": (process.memory_info().rss - rss_before) / MB,
           "box_during_embedding_ms_p50": statistics.median(during) if during else None}
    revisit, disk_hits = {"memory": [], "disk": []}, store.disk_hits
    for z in np.linspace(depth * 0.15, depth * 0.85, 20).astype(int):
        ms = timed_box(session, int(z), box_of_mask(organ[z]))[0]
        revisit["disk" if store.disk_hits > disk_hits else "memory"].append(ms)
        disk_hits = store.disk_hits
    both = revisit["memory"] + revisit["disk"]
    row.update(revisit_ms_p50=statistics.median(both), revisit_from_disk=len(revisit["disk"]),
               revisit_memory_ms_p50=statistics.median(revisit["memory"]) if revisit["memory"] else None,
               revisit_disk_ms_p50=statistics.median(revisit["disk"]) if revisit["disk"] else None,
               encoder_runs=store.misses)
    return row


def zoom_crops(predictor: Predictor, size: int) -> dict:
    volume, organ = ct_volume(40, size)
    session = AnnotationSession(predictor, volume, np.zeros(volume.shape, np.int32), window=WINDOW)
    rng = np.random.default_rng(2)
    new, reused = [], []
    for z in range(10, 30):
        box = box_of_mask(organ[z])
        for nudge in range(6):  # the drawn box, then five nudges of 2-8 px
            moved = box + (rng.integers(-8, 9, 4) if nudge else 0)
            before = predictor.crops.reused
            ms = timed_box(session, z, np.clip(moved, 0, size - 1))[0]
            (reused if predictor.crops.reused > before else new).append(ms)
    return {"crop_reuse_rate": predictor.crops.reuse_rate, "box_new_crop_ms_p50": statistics.median(new),
            "box_reused_crop_ms_p50": statistics.median(reused) if reused else None}


def big_image(predictor: Predictor, size: int = 4096) -> dict:
    """A 4096x4096 slice against a 512x512 copy of it, same box in relative terms."""
    hu, organ = ct_slice(100, 200, size, np.random.default_rng(3))
    row = {}
    for name, (image, mask) in {"big": (hu, organ), "small": (hu[::size // 512, ::size // 512],
                                                              organ[::size // 512, ::size // 512])}.items():
        session = AnnotationSession(predictor, image, np.zeros(image.shape, np.int32), window=WINDOW)
        box = box_of_mask(mask)
        first, _ = timed_box(session, None, box)
        moves = [timed_box(session, None, box + shift * image.shape[0] / 512) for shift in (2, -2, 3, -3)]
        row[f"{name}_first_box_ms"] = first
        row[f"{name}_box_ms_p50"] = statistics.median(m[0] for m in moves)
        row[f"{name}_gui_thread_ms_p50"] = statistics.median(m[1] for m in moves)
    row["big_over_small_box"] = row["big_box_ms_p50"] / row["small_box_ms_p50"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry name, model file or config (default: the default)")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--skip-big", action="store_true", help="leave out the 4096x4096 image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_compute_threads()  # as the widget's workers: all cores but one
    model = args.model or default_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(model)
    predictor = Predictor(loaded, crop_tolerance=INTERACTIVE_TOLERANCE)
    row: dict = {"model": model, "zoom": predictor.zoom, "threads": torch.get_num_threads()}
    if predictor.zoom:
        row.update(zoom_crops(predictor, args.size))
    else:
        row.update(whole_slice_volume(predictor, args.slices, args.size))
    if not args.skip_big:
        row.update(big_image(Predictor(loaded, crop_tolerance=INTERACTIVE_TOLERANCE)))
    print(f"bench_volume: model {model} ({'zoom' if predictor.zoom else 'whole-slice'}), {row['threads']} threads")
    for key, value in row.items():
        if isinstance(value, float):
            print(f"  {key:28s} {value:10.2f}")
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
