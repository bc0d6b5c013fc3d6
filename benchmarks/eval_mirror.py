"""Mirror averaging against one pass, side by side in one run: Dice, HD95, uncertainty AUROC and time.

    python benchmarks/eval_mirror.py --folders D/eval_kvasir,D/eval_mr,D/eval_ct [--held-back D/train] [--json]

Each folder holds images/ and masks/; `--held-back` takes a recipe's training folder and scores the
10 % the recipe's trainer held back (`split(samples, 0.1, seed 0)`: never trained on), per source
(the name's prefix: kvasir, brats, scene, phantom).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from napari_imedsam.evaluation import evaluate
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.model.registry import load_model
from src_train.data import load_dataset, load_folder, split


def side_by_side(loaded, name: str, samples: list) -> dict:
    row = {"set": name, "n": len(samples)}
    for key, mirror in (("plain", False), ("mirror", True)):
        start = time.perf_counter()
        metrics = evaluate(Predictor(loaded, mirror=mirror), samples)
        row[key] = {"dice": round(metrics["dice"], 4), "hd95": round(metrics["hd95"], 2),
                    "auroc": round(metrics["uncertainty_auroc"], 3), "seconds": round(time.perf_counter() - start, 1)}
    row["time_ratio"] = round(row["mirror"]["seconds"] / max(row["plain"]["seconds"], 1e-9), 2)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", default="", help="comma-separated folders with images/ and masks/")
    parser.add_argument("--held-back", default=None, help="a recipe's training folder: score its held-back 10 %%")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(args.model, device="cpu")
        folders = [Path(f) for f in args.folders.split(",") if f]
        sets = [(f.name, load_folder(f / "images", f / "masks")) for f in folders]
        if args.held_back:
            _, held = split(load_dataset(args.held_back), 0.1, 0)
            for source in sorted({s.name.split("_")[0] for s in held}):
                sets.append((f"held-back {source}", [s for s in held if s.name.split("_")[0] == source]))
        rows = [side_by_side(loaded, name, samples) for name, samples in sets]
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            p, m = row["plain"], row["mirror"]
            print(f"{row['set']} ({row['n']}): Dice {p['dice']:.4f} -> {m['dice']:.4f}, HD95 {p['hd95']:.2f} -> "
                  f"{m['hd95']:.2f}, AUROC {p['auroc']:.3f} -> {m['auroc']:.3f}, time x{row['time_ratio']}")


if __name__ == "__main__":
    main()
