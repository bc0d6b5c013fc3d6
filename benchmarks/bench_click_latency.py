"""What a click, and the corrector's suggestions, cost on top of its box, at growing slice sizes, side
by side in one run.

The CT abdomen sample is resized to each `--sizes` entry; one tight box on the liver, one positive
click in a region the model missed. Per size: the box's prediction (`box_ms`), the same with the
click (`box_click_ms`), and the click's correction alone (`click_ms`: the random walker and the
click refiner, with the slice's window applied to their windows only, `Predictor._apply_clicks`), as
medians, with `click_over_box` = click_ms / box_ms; `walker_click_ms` is the same click without the
click refiner (`click_over_walker`: what the refiner adds). `suggest_ms`: the bundled Dual False
Corrector's suggestions for the box (what the dock adds to every `demo` box), `suggest_over_box`.

    python benchmarks/bench_click_latency.py [--sizes 512,2048,4096] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
from skimage.transform import resize

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.correction import suggest
from napari_imedsam.inference.predictor import Predictor, content_digest
from napari_imedsam.inference.preprocess import IntensityWindow
from napari_imedsam.model.corrector import bundled_corrector
from napari_imedsam.model.registry import load_model


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def measure(predictor: Predictor, size: int, repeats: int) -> dict:
    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    big = resize(image.astype(np.float32), (size, size), order=1, preserve_range=True).astype(image.dtype)
    truth = resize((labels == names.index("liver_000") + 1).astype(np.float32), (size, size), order=0) > 0.5
    box = box_of_mask(truth)
    plain = predictor.predict(big, box)
    missed = np.argwhere(truth & ~plain.refined_mask)
    row, col = missed[len(missed) // 2]
    points = np.array([[float(col), float(row), 1.0]])
    resolved = predictor._intensity_range((content_digest(big), None, IntensityWindow().cache_token()), big, None)
    box_ms = median_ms(lambda: predictor.predict(big, box), repeats)
    box_click_ms = median_ms(lambda: predictor.predict(big, box, points=points), repeats)
    click_ms = median_ms(lambda: predictor._apply_clicks(plain, big, box, points, resolved), repeats)
    walker = Predictor(predictor.model, click_refiner=False)  # the same click without the click refiner
    walker_ms = median_ms(lambda: walker._apply_clicks(plain, big, box, points, resolved), repeats)
    corrector = bundled_corrector("demo", predictor.model.weights_sha256)
    suggest_ms = median_ms(lambda: suggest(corrector, plain, big), repeats)
    return {"size": size, "box_ms": round(box_ms, 1), "box_click_ms": round(box_click_ms, 1),
            "click_ms": round(click_ms, 1), "click_over_box": round(click_ms / box_ms, 3),
            "walker_click_ms": round(walker_ms, 1), "click_over_walker": round(click_ms / walker_ms, 2),
            "suggest_ms": round(suggest_ms, 1), "suggest_over_box": round(suggest_ms / box_ms, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,2048,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(load_model("demo", device="cpu"))
        rows = [measure(predictor, int(size), args.repeats) for size in args.sizes.split(",")]
    if args.json:
        print(json.dumps({"model": "demo", "rows": rows}))
    else:
        for row in rows:
            print(f"{row['size']}^2: box {row['box_ms']:.0f} ms, box + click {row['box_click_ms']:.0f} ms, "
                  f"click alone {row['click_ms']:.0f} ms ({row['click_over_box']:.2f} of the box; "
                  f"{row['walker_click_ms']:.0f} ms without the click refiner); suggestions {row['suggest_ms']:.0f} ms "
                  f"({row['suggest_over_box']:.2f} of the box)")


if __name__ == "__main__":
    main()
