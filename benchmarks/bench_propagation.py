"""Propagation through a BraTS 2013 volume from one tight box on the tumour's largest slice.

    python benchmarks/bench_propagation.py --brats ../shared/data/brats2013_dev [--model demo]
                                           [--patients brats_2013_pat0006_1 ...] [--json]

FLAIR, whole tumour (largest connected component of the expert labels), slices along the volume's
last axis as napari shows a NIfTI. Prints per patient the volume Dice, the slices the propagated
object spans against the true ones, each direction's stop reason and the seconds taken.
BraTS 2013 is CC BY-NC-SA 3.0: it is read from its folder, never copied.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_imedsam.evaluation import dice
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.propagation import PropagationRules, propagate_both
from napari_imedsam.inference.session import AnnotationSession
from napari_imedsam.model.registry import load_model


def tumour_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    volume = np.asarray(nib.load(folder / "Flair_subtrMeanDivStd.nii.gz").dataobj, np.float32)
    labels = np.asarray(nib.load(folder / "OTMultiClass.nii.gz").dataobj)
    volume, truth = np.moveaxis(volume, -1, 0), np.moveaxis(labels > 0, -1, 0)
    components, count = ndimage.label(truth)
    sizes = ndimage.sum(truth, components, range(1, count + 1))
    return volume, components == 1 + int(np.argmax(sizes))


def run(predictor: Predictor, folder: Path, rules: PropagationRules) -> dict:
    volume, truth = tumour_volume(folder)
    start_slice = int(np.argmax(truth.sum(axis=(1, 2))))
    session = AnnotationSession(predictor, volume, np.zeros(volume.shape, np.int32))
    start = time.perf_counter()
    session.segment(start_slice, box_of_mask(truth[start_slice]), 1)
    stops: list[str] = []
    for result in propagate_both(session, start_slice, 1, stops, rules):
        session.apply(result)
    predicted = session.labels == 1
    spans = [np.nonzero(m.any(axis=(1, 2)))[0] for m in (predicted, truth)]
    return {"patient": folder.name, "volume_dice": round(dice(predicted, truth), 4),
            "predicted_slices": [int(spans[0][0]), int(spans[0][-1])] if spans[0].size else None,
            "true_slices": [int(spans[1][0]), int(spans[1][-1])], "start_slice": start_slice,
            "stops": stops, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats", type=Path, required=True, help="the brats2013_dev folder")
    parser.add_argument("--model", default=None, help="default: the default model")
    parser.add_argument("--patients", nargs="*", default=["brats_2013_pat0006_1"])
    parser.add_argument("--one-pass", action="store_true",
                        help="propagated slices without mirror averaging (before session 7's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(load_model(args.model))
    for patient in args.patients:
        row = run(predictor, args.brats / patient, PropagationRules(mirror=not args.one_pass))
        print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
