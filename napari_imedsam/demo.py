"""`make demo`: the whole headless pipeline end to end, offline, on data with exact ground truth.

With `--model NAME_OR_FILE` (e.g. `sam_vit_b` once its weights are in the cache) it segments the
given image; without one it fits the tiny I-MedSAM decoder on generated phantoms (decoder mode,
~20 s on 2 CPU cores), segments a phantom it never saw, and reports Dice against the exact mask.
Either way it writes a panel PNG: image | coarse probability | uncertainty | refined mask.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .inference.predictor import Prediction, Predictor
from .io.images import read_image, select_slice, write_atomic
from .io.phantoms import ellipse_phantom, ellipse_phantoms
from .model.registry import load_model


def heat(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB 'hot' colour map (black, red, yellow, white)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return (np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255)


def panel(image01: np.ndarray, result: Prediction) -> np.ndarray:
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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registry name or checkpoint; default: fit tiny on phantoms")
    parser.add_argument("--image", default=None, help="image to segment with --model (default: a phantom)")
    parser.add_argument("--box", default=None, help="x0,y0,x1,y1 for --image")
    parser.add_argument("--slice", type=int, default=None)
    parser.add_argument("--out", default="artifacts/demo", help="output folder (default artifacts/demo)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)

    truth = None
    if args.model is None:
        from src_train.fit import EncodedExample, fit_decoder
        from src_train.points import box_of_mask

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_model("tiny")
        predictor = Predictor(loaded)
        start = time.perf_counter()
        train = [EncodedExample(predictor.embed(i), m) for i, m in ellipse_phantoms(8, size=128, seed=0)]
        losses = fit_decoder(loaded.network, train, steps=400, seed=0)
        print(f"fitted the tiny I-MedSAM decoder on 8 phantoms: loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f} "
              f"in {time.perf_counter() - start:.1f} s")
        image, truth = ellipse_phantom(128, np.random.default_rng(2024))
        box = box_of_mask(truth)
    else:
        if not (args.image and args.box):
            parser.error("--model needs --image and --box")
        loaded = load_model(args.model)
        predictor = Predictor(loaded)
        image = select_slice(read_image(args.image), args.slice)
        box = np.array([float(v) for v in args.box.split(",")])

    start = time.perf_counter()
    result = predictor.predict(image, box)
    elapsed = time.perf_counter() - start
    print(f"segmented box {np.round(box).astype(int).tolist()} in {elapsed * 1e3:.0f} ms (encoder included): "
          f"{int(result.refined_mask.sum())} px, mean uncertainty in box {result.mean_uncertainty_in_box:.4f}")
    if truth is not None:
        dense = predictor.predict(image, box, dense=True)
        print(f"Dice vs exact mask: refined {dice(result.refined_mask, truth):.4f}, "
              f"coarse {dice(result.coarse_prob > 0.5, truth):.4f}; "
              f"ROI vs dense decode agreement {(result.refined_mask == dense.refined_mask).mean():.4%}")
    from .inference.preprocess import normalize_intensity

    image01 = normalize_intensity(image)
    image01 = image01[..., 0] if np.allclose(image01[..., 0], image01[..., 1]) else image01
    figure = out / "demo_panel.png"
    write_atomic(figure, lambda tmp: Image.fromarray(panel(image01, result)).save(tmp, format="PNG"))
    print(f"wrote {figure} (image + box | coarse probability | uncertainty | refined mask)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
