"""The bundled demo model's recipe: build the training and held-out sets from the shared data, train.

    python -m src_train.demo_recipe --shared ../shared/data --work artifacts/demo_recipe --minutes 55 \
        --fine-minutes 5 --install

Training data (never shipped; only the trained weights are): Kvasir-SEG polyps (5 of every 6
images; research/education terms), BraTS 2013 slices of patients 3, 4, 5 (CC BY-NC-SA 3.0): FLAIR
with the whole-tumour mask and T1c with the tumour-core mask, generated ellipse phantoms, and
generated CT-like scenes (`scenes.py`: many touching structures, two targets per scene). Held out
for evaluation: every 6th Kvasir image, BraTS patient 6 (FLAIR, whole tumour), and all CT slices
(one sample per structure; no real CT is trained on). The tiny I-MedSAM backbone trains from
scratch in `full` mode with zoom and augmentation, then its fine INR alone (`fine` mode) on the
points UGS picks, and the result is written whole in float16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_imedsam.io.images import read_image
from napari_imedsam.io.phantoms import ellipse_phantom

from .scenes import ct_scene, scene_targets

BUNDLED = Path(__file__).resolve().parents[1] / "napari_imedsam" / "weights" / "imedsam_demo_tiny.safetensors"
BRATS_TRAIN = ("brats_2013_pat0003_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1")
BRATS_HELD_OUT = ("brats_2013_pat0006_1",)


def save_image(folder: Path, name: str, image: np.ndarray) -> None:
    """FOLDER/images/NAME: uint8 as PNG, anything else as float32 .npy (as `data.load_folder` reads)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    if image.dtype == np.uint8:
        Image.fromarray(image).save(folder / "images" / f"{name}.png")
    else:
        np.save(folder / "images" / f"{name}.npy", image.astype(np.float32))


def _pair(folder: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    save_image(folder, name, image)
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")


def _brats_slices(folder: Path, patients: tuple[str, ...], every: int, min_area: int, sequence: str = "Flair",
                  classes: tuple[int, ...] = (1, 2, 3, 4)):
    """(name, slice, mask) every `every` slices: `sequence` (Flair, T1c) and the union of `classes`
    (BraTS labels: 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing tumour)."""
    for patient in patients:
        image = read_image(folder / patient / f"{sequence}_subtrMeanDivStd.nii.gz").data  # (z, y, x)
        tumour = np.isin(read_image(folder / patient / "OTMultiClass.nii.gz").data, classes)
        for z in range(0, image.shape[0], every):
            if tumour[z].sum() >= min_area:
                yield f"{patient}_{sequence.lower()}_z{z:03d}", image[z], tumour[z]


def build(shared: Path, work: Path, n_phantoms: int = 60, n_scenes: int = 300, seed: int = 0) -> dict:
    """Write train/ and held-out eval folders (images/ + masks/) under `work`; returns counts."""
    if work.exists():
        shutil.rmtree(work)
    train, counts = work / "train", {}
    kvasir = shared / "kvasir_dev"
    names = sorted(p.name for p in (kvasir / "images").iterdir())
    for index, name in enumerate(names):
        stem = Path(name).stem
        target = work / ("eval_kvasir" if index % 6 == 5 else "train")
        image = np.asarray(Image.open(kvasir / "images" / name).convert("RGB"))
        mask_path = next((kvasir / "masks").glob(f"{stem}.*"))
        mask = np.asarray(Image.open(mask_path).convert("L")) > 127
        _pair(target, f"kvasir_{stem}", image, mask)
    for name, image, mask in _brats_slices(shared / "brats2013_dev", BRATS_TRAIN, every=2, min_area=200):
        _pair(train, name, image, mask)
    for name, image, mask in _brats_slices(shared / "brats2013_dev", BRATS_TRAIN, every=4, min_area=100,
                                           sequence="T1c", classes=(1, 3, 4)):
        _pair(train, name, image, mask)
    for name, image, mask in _brats_slices(shared / "brats2013_dev", BRATS_HELD_OUT, every=5, min_area=200):
        _pair(work / "eval_mr", name, image, mask)
    rng = np.random.default_rng(seed)
    for i in range(n_phantoms):
        image, mask = ellipse_phantom(int(rng.choice([128, 192, 256])), rng, contrast=float(rng.uniform(0.15, 0.5)))
        _pair(train, f"phantom_{i:03d}", image, mask)
    for i in range(n_scenes):
        image, labels, kinds = ct_scene(int(rng.choice([192, 256])), rng)
        for j, (kind, mask) in enumerate(scene_targets(labels, kinds, rng, n=2)):
            _pair(train, f"scene_{i:03d}_{j}_{kind}", image, mask)
    ct = shared / "ct_slices"
    for mask_path in sorted((ct / "masks").glob("*.png")):
        stem = next(p.stem for p in (ct / "images").glob("*.png") if mask_path.stem.startswith(p.stem + "_"))
        image = np.asarray(Image.open(ct / "images" / f"{stem}.png"))[..., 0]
        mask = np.asarray(Image.open(mask_path)) > 127
        if mask.sum() >= 50:
            _pair(work / "eval_ct", mask_path.stem, image, mask)
    for folder in sorted(work.iterdir()):
        counts[folder.name] = len(list((folder / "images").iterdir()))
    digest = hashlib.sha256()
    for path in sorted((work / "train").rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    counts["train_manifest_sha256"] = digest.hexdigest()
    (work / "manifest.json").write_text(json.dumps(counts, indent=2))
    return counts


DATA_TERMS = ("Kvasir-SEG (research and education only), BraTS 2013 FLAIR and T1c of patients 3-5 "
              "(CC BY-NC-SA 3.0), generated ellipse phantoms and CT-like scenes")


def package(trained: Path, fine_stage: Path | None, target: Path, counts: dict, recipe: str) -> Path:
    """The shipped file: the `full`-mode model with its `fine`-stage fine INR, whole, in float16; the
    header keeps the first stage's (config, options, metrics, data manifest hash), adds the second
    stage's options and metrics, the recipe, the data terms and the file counts. `fine_stage` None: the
    second stage did not beat the first (it saved nothing), so the first stage ships alone."""
    from napari_imedsam.model.registry import load_model
    from napari_imedsam.model.weights import atomic_save_safetensors, read_safetensors

    _, header = read_safetensors(trained)
    fine_header = read_safetensors(fine_stage)[1] if fine_stage is not None else {}
    network = load_model(trained, adapters=fine_stage, progress=False).network
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in network.state_dict().items()}
    header = {**header, "recipe": recipe, "data": DATA_TERMS, "precision": "float16 weights, loaded as float32",
              "fine_stage": {k: fine_header.get(k) for k in ("options", "metrics", "metrics_before", "time")},
              "counts": {k: v for k, v in counts.items() if k != "train_manifest_sha256"},
              "training_files_sha256": counts["train_manifest_sha256"]}
    return atomic_save_safetensors(half, target, header)


def package_clicks(clicked: Path, start: Path, target: Path, counts: dict, recipe: str) -> Path:
    """The click stage's model, whole, in float16, its header the start's plus the click stage's."""
    from napari_imedsam.model.registry import load_model
    from napari_imedsam.model.weights import atomic_save_safetensors, read_safetensors

    _, header = read_safetensors(start)
    _, click_header = read_safetensors(clicked)
    network = load_model(clicked, progress=False).network
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in network.state_dict().items()}
    header = {**header, "recipe": recipe,
              "click_stage": {k: click_header.get(k) for k in ("options", "metrics", "metrics_before", "time")}}
    return atomic_save_safetensors(half, target, header)


def _train(model: str | Path, mode: str, data: Path, minutes: float, seed: int, out: Path, name: str,
           augment: bool = False, **extra) -> Path | None:
    """One stage: the trainer on the recipe's data, with zoom, for `minutes` of wall time. None when the
    stage ended with the weights it started from (the trainer then saves no new version)."""
    from napari_imedsam.model.registry import load_model

    from .data import load_dataset
    from .trainer import TrainOptions, train

    options = TrainOptions(mode=mode, zoom=True, augment=augment, epochs=100_000, max_seconds=minutes * 60,
                           seed=seed, batch_size=8, val_fraction=0.1, **extra)
    report = train(load_model(str(model), device="cpu"), load_dataset(data), options, out, name=name,
                   command=f"src_train.demo_recipe stage {mode}")
    return report.version_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/demo_recipe"))
    parser.add_argument("--minutes", type=float, default=55.0, help="first stage: every weight (full mode)")
    parser.add_argument("--fine-minutes", type=float, default=5.0, help="second stage: the fine INR alone")
    parser.add_argument("--click-minutes", type=float, default=0.0,
                        help="third stage: every weight again, half the batches with simulated clicks")
    parser.add_argument("--from-stages", type=Path, default=None,
                        help="skip stages 1-2: start the click stage from this packaged model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--install", action="store_true",
                        help=f"write the result over the bundled model ({BUNDLED}) instead of WORK/{BUNDLED.name}")
    args = parser.parse_args(argv)
    recipe = ("python -m src_train.demo_recipe --shared ../shared/data --work artifacts/demo_recipe "
              f"--minutes {args.minutes:g} --fine-minutes {args.fine_minutes:g} --click-minutes {args.click_minutes:g}"
              f" --seed {args.seed}" + (f" --from-stages {args.from_stages}" if args.from_stages else "")
              + (" --install" if args.install else ""))
    counts = build(args.shared, args.work, seed=args.seed)
    print(json.dumps(counts, indent=2))
    if args.prepare_only:
        return 0
    data, out = args.work / "train", args.work / "out"
    target = BUNDLED if args.install else args.work / BUNDLED.name
    if args.from_stages is None:
        trained = _train("tiny", "full", data, args.minutes, args.seed, out, "demo", augment=True)
        if trained is None:
            raise SystemExit("the first stage did not beat the untrained model on its held-back samples")
        fine = _train(trained, "fine", data, args.fine_minutes, args.seed, out, "demo_fine")
        packaged = package(trained, fine, args.work / "stages_1_2.safetensors" if args.click_minutes else target,
                           counts, recipe)
    else:
        packaged = args.from_stages
    if args.click_minutes:  # clicks: the prompt path learns what a positive / negative click means
        clicked = _train(packaged, "full", data, args.click_minutes, args.seed, out, "demo_clicks", augment=True,
                         clicks=0.5, lr_encoder=1e-4, lr_decoder=3e-4, keep_start=False)
        if clicked is None:
            raise SystemExit("the click stage took no step: nothing to package")
        target = package_clicks(clicked, packaged, target, counts, recipe)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
