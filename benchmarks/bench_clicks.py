"""The interactive benchmark: a simulated user corrects each image with clicks after one tight box.

    python benchmarks/bench_clicks.py --images DIR --masks DIR [--model demo] [--corrector FILE|bundled]
                                      [--max-clicks 10] [--limit N] [--mirror] [--json]
                                      [--click-refiner bundled|none|FILE] [--ablate-band]

Box first; then each click goes to the centre of the largest remaining error region (positive in a
miss, negative in a false alarm: `napari_imedsam.evaluation.next_click`), with the box and all
earlier clicks, up to `--max-clicks`. Each click is the walker's local correction extended by the
model's click refiner (`--click-refiner`); with a refiner, the walker alone is measured in the same run
too (`walker_` keys). Printed: mean Dice after 0, 1, 3, 5 clicks (`dice_at_clicks`,
a finished image keeps its Dice), NoC@85 and NoC@90 (mean clicks to reach that Dice; `max_clicks`
when never). With `--corrector`, the same user may instead accept one suggestion of the Dual False
Corrector per step (the region that helps most, when one helps): `corrector_` keys. Without a refiner
the walker also frees the doubtful band joined to each click (`inference.clicks.DOUBT`); `--ablate-band`
measures the refiner-less walker without that band in the same run (`no_band_` keys).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings

import numpy as np
from scipy import ndimage

from napari_imedsam.evaluation import click_summary, dice, next_click
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.model.registry import load_model
from src_train.data import load_folder


def best_suggestion(suggestions, mask: np.ndarray, truth: np.ndarray) -> np.ndarray | None:
    """The mask after accepting the one suggested region that raises Dice most (None if none does)."""
    best, best_dice = None, dice(mask, truth)
    for regions, value in ((suggestions.remove, False), (suggestions.add, True)):
        for index in range(1, int(regions.max()) + 1):
            candidate = mask.copy()
            candidate[regions == index] = value
            score = dice(candidate, truth)
            if score > best_dice:
                best, best_dice = candidate, score
    return best


def simulate(predictor: Predictor, sample, max_clicks: int, corrector=None) -> list[float]:
    """Dice after 0..max_clicks interactions on one sample."""
    from napari_imedsam.inference.correction import suggest

    truth = sample.mask.astype(bool)
    points: list[tuple[float, float, float]] = []
    result = predictor.predict(sample.image, sample.box_xyxy, window=sample.window)
    mask = result.refined_mask.copy()
    scores = [dice(mask, truth)]
    for _ in range(max_clicks):
        if corrector is not None:
            accepted = best_suggestion(suggest(corrector, result, sample.image, sample.window), mask, truth)
            if accepted is not None:
                mask = accepted
                scores.append(dice(mask, truth))
                continue
        click = next_click(mask, truth)
        if click is None:
            scores.append(scores[-1])
            continue
        row, col, positive = click
        points.append((float(col), float(row), 1.0 if positive else 0.0))
        result = predictor.predict(sample.image, sample.box_xyxy, window=sample.window, points=np.array(points))
        mask = result.refined_mask.copy()
        scores.append(dice(mask, truth))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--masks", required=True)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--corrector", default=None, help="a Dual False Corrector file for the model, or 'bundled'")
    parser.add_argument("--click-refiner", default="bundled",
                        help="bundled (the one shipped with the model, if any), none (the walker alone), or a file")
    parser.add_argument("--max-clicks", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--mirror", action="store_true", help="the box's prediction averaged over mirror images")
    parser.add_argument("--ablate-band", action="store_true",
                        help="also the walker alone without its uncertainty band (no_band_ keys)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(args.model)
    if args.click_refiner != "bundled":
        loaded = loaded.with_click_refiner(None if args.click_refiner == "none" else args.click_refiner)
    predictor = Predictor(loaded, mirror=args.mirror)
    samples = load_folder(args.images, args.masks)
    samples = [s for s in samples if ndimage.label(s.mask)[1] > 0]
    samples = samples[:args.limit] if args.limit else samples
    refiner = "none" if loaded.click_refiner is None else args.click_refiner
    row = {"model": args.model, "mirror": args.mirror, "click_refiner": refiner, "n": len(samples),
           "max_clicks": args.max_clicks}
    row.update(click_summary([simulate(predictor, s, args.max_clicks) for s in samples], args.max_clicks))
    if loaded.click_refiner is not None:  # the walker alone, side by side in the same run
        walker = Predictor(loaded, mirror=args.mirror, click_refiner=False)
        row.update(click_summary([simulate(walker, s, args.max_clicks) for s in samples], args.max_clicks, "walker_"))
    if args.ablate_band:
        from napari_imedsam.inference import clicks

        walker = Predictor(loaded, mirror=args.mirror, click_refiner=False)
        kept, clicks.DOUBT = clicks.DOUBT, math.inf  # no pixel is that uncertain: the click's disk only
        try:
            row.update(click_summary([simulate(walker, s, args.max_clicks) for s in samples], args.max_clicks,
                                     "no_band_"))
        finally:
            clicks.DOUBT = kept
    if args.corrector:
        from napari_imedsam.model.corrector import chosen_corrector

        corrector = chosen_corrector(args.corrector, args.model, loaded.weights_sha256)
        row.update(click_summary([simulate(predictor, s, args.max_clicks, corrector) for s in samples],
                                 args.max_clicks, "corrector_"))
    if args.json:
        print(json.dumps(row))
    else:
        for key, value in row.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
