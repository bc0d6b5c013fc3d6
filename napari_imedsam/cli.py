"""`imedsam` command line: info, predict, train and evaluate (the last two call src_train)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

import numpy as np

from .cli_checks import (
    check_outputs,
    error_message,
    join_negative_values,
    json_safe,
    parse_size,
    positive_input_size,
    show_warning,
)
from .cli_stages import SECOND_STAGES
from .inference.predictor import Predictor
from .inference.preprocess import CT_PRESETS, MR_PERCENTILES, InputError, IntensityWindow
from .interrupts import StopOnInterrupt, world_size
from .io.images import read_image, select_slice, write_arrays
from .model.config import UNCERTAINTY_KINDS
from .model.registry import REGISTRY, default_model, load_model
from .model.weights import CheckpointError

DEFAULT_MODEL = default_model()


def _numbers(text: str, count: int, what: str, cast=float) -> tuple:
    try:
        values = tuple(cast(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if len(values) != count:
        raise InputError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    return values


def parse_window(text: str | None) -> IntensityWindow | None:
    """auto | mr | minmax | a CT preset name | level,width."""
    if text in (None, "auto"):
        return None
    if text == "mr":
        return MR_PERCENTILES
    if text == "minmax":
        return IntensityWindow("minmax")
    if text in CT_PRESETS:
        return CT_PRESETS[text]
    level, width = _numbers(text, 2, "--window (level,width)")
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise InputError(f"--window {text}: level must be a number and width a positive number")
    return IntensityWindow("window", level=level, width=width)


MIRROR_HELP = ("average each box over the image and its three mirror images: 4x the time, higher Dice "
               "(README: Mirror averaging)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name ({', '.join(REGISTRY)}), a checkpoint file, or a bare config "
                             f"(tiny, vit_b: untrained). Default: {DEFAULT_MODEL}")
    parser.add_argument("--input-size", type=positive_input_size, default=None,
                        help="encoder input size in pixels (default: the config's; 512 for ViT-B)")
    parser.add_argument("--adapters", default=None, help="adapter file (.safetensors) to load on top")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--zoom", action=argparse.BooleanOptionalAction, default=None,
                        help="encode the box plus a margin instead of the whole slice (default: as the model "
                             "is meant to be used, from its file; train: on box crops, inherited likewise)")


def _load(args: argparse.Namespace):
    return load_model(args.model, input_size=args.input_size, device=args.device, adapters=args.adapters)


def cmd_info(args: argparse.Namespace) -> int:
    loaded = _load(args)
    net = loaded.network
    config = net.config
    enc, dec = config.encoder, config.decoder
    print(f"model        {loaded.model_id} (config {config.name}, weights sha256 {loaded.weights_sha256[:16]})")
    kind = "LiteMedSAM TinyViT, last stage" if enc.backbone == "lite" else "ViT"
    print(f"encoder      {kind} {enc.embed_dim}-d x {enc.depth} blocks, {enc.num_heads} heads, patch {enc.patch_size}, "
          f"input {enc.img_size} px -> {enc.grid_size}x{enc.grid_size} tokens x {enc.out_chans}")
    print(f"adapters     LoRA rank {enc.lora_rank} on q,v; "
          f"frequency adapter ({enc.fa_spectrum}, hidden {enc.fa_hidden})")
    print(f"decoder      coarse INR {list(dec.coarse_hidden)} (dropout {dec.dropout}, T={dec.mc_passes}), "
          f"fine INR {list(dec.fine_hidden)}, UGS top {dec.refine_fraction:.1%}")
    refiner = loaded.click_refiner
    if refiner is None:
        print("clicks       random walker around each click (no click refiner)")
    else:
        scores = refiner.held_back("dice_3")
        measured = f"; its held-back Dice after 3 clicks {scores[0]:.4f} -> {scores[1]:.4f}" if scores else ""
        print(f"clicks       random walker around each click, extended by the click refiner{measured}")
    from .model.corrector import bundled_corrector

    corrector = bundled_corrector(args.model, loaded.weights_sha256)
    if corrector is not None:
        scores = corrector.held_back("dice")
        measured = f"; its held-back Dice {scores[0]:.4f} -> {scores[1]:.4f}" if scores else ""
        print(f"corrector    Dual False Corrector bundled (suggestions in the dock){measured}")
    print("trainable parameters by component:")
    total = 0
    for group, params in net.parameter_groups().items():
        count = sum(p.numel() for _, p in params)
        total += count
        print(f"  {group:<18} {count:>12,}")
    every = sum(p.numel() for p in net.parameters())
    print(f"  {'total trainable':<18} {total:>12,}  ({total / 1e6:.2f} M)")
    print(f"  {'frozen':<18} {every - total:>12,}  ({(every - total) / 1e6:.2f} M)")
    return 0


def read_sample(name: str):
    """A bundled sample and, with `/STRUCTURE`, that structure's true mask (else None):
    `sample:ct_abdomen` (ct_thorax, ct_pelvis) are CT slices with expert masks, upright (e.g.
    `sample:ct_abdomen/liver_000`); `sample:phantom_3d` is the generated CT volume in HU with
    exact labels (`sample:phantom_3d/organ`, `/lesion`; the mask is then a volume)."""
    from ._sample_data import PHANTOM_SPACING, load_sample
    from .io.images import ImageData

    pixels, truth = load_sample(name)
    return ImageData(pixels, spacing=PHANTOM_SPACING if pixels.ndim == 3 else None), truth


def cmd_predict(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    window = parse_window(args.window)
    outputs = {"--out": args.out, "--uncertainty": args.uncertainty, "--coarse": args.coarse}
    check_outputs(outputs, [] if args.image.startswith("sample:") else [args.image])
    image, truth = read_sample(args.image) if args.image.startswith("sample:") else (read_image(args.image), None)
    if args.box is None and truth is None:
        raise InputError("--box x0,y0,x1,y1 is required (only sample:NAME/STRUCTURE boxes its own mask)")
    if truth is not None and truth.ndim == 3 and args.slice is None:  # a volume sample's structure
        args.slice = int(np.argmax(truth.sum(axis=(1, 2))))
        print(f"slice {args.slice} (the structure's largest cross-section; choose another with --slice)")
    slice_2d = select_slice(image, args.slice)
    if truth is not None and truth.ndim == 3:
        truth = truth[args.slice]
        if not truth.any():
            raise InputError(f"the structure does not appear on slice {args.slice}; choose another with --slice")
    loaded = _load(args)
    if args.box is None:
        from .inference.preprocess import box_of_mask

        box = box_of_mask(truth)
    else:
        box = np.array(_numbers(args.box, 4, "--box (x0,y0,x1,y1)"))
    predictor = Predictor(loaded, zoom=args.zoom, mirror=args.mirror)
    result = predictor.predict(slice_2d, box, window=window, output_size=size, slice_index=args.slice)
    volume_slice = args.slice if image.is_volume and size is None else None
    source = image if size is None else None
    maps = [(args.out, result.refined_mask), (args.uncertainty, result.uncertainty.astype(np.float32)),
            (args.coarse, result.coarse_prob.astype(np.float32))]
    replaced = [path for path, _ in maps if path and os.path.exists(path)]
    write_arrays([(path, array) for path, array in maps if path], source, volume_slice)  # all or nothing
    if replaced:
        print(f"replaced the existing {', '.join(replaced)}")
    area = int(result.refined_mask.sum())
    print(f"wrote {args.out}: {area} mask pixels, mean uncertainty in box {result.mean_uncertainty_in_box:.4f}, "
          f"refined {result.n_refined} points")
    if truth is not None and size is None:
        from .evaluation import dice

        print(f"Dice against the sample's expert mask: {dice(result.refined_mask, truth):.4f} "
              f"(box {np.round(box).astype(int).tolist()})")
    return 0


def _init_distributed() -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs)."""
    import os

    import torch
    from torch import distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return int(os.environ.get("RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank()


def cmd_train(args: argparse.Namespace) -> int:
    import hashlib

    if args.mode in SECOND_STAGES:
        return SECOND_STAGES[args.mode](args, _load(args))

    from src_train.data import load_dataset
    from src_train.trainer import EpochRecord, TrainOptions, check_name, check_options, train

    options = TrainOptions(mode=args.mode, epochs=args.epochs, max_seconds=args.max_seconds, seed=args.seed,
                           batch_size=args.batch_size, n_points=args.points, zoom=args.zoom,
                           augment=args.augment, val_fraction=args.val_fraction, clicks=args.clicks,
                           add_sf_fusion=args.sf_fusion, steps=args.steps,
                           **({"lr_adapters": args.lr_adapters} if args.lr_adapters is not None else {}))
    check_options(options)  # before anything is loaded, trained or written
    check_name(args.name)
    rank = _init_distributed()  # "auto" then means this rank's GPU (set_device) or the CPU
    samples = load_dataset(args.data)
    loaded = _load(args)
    print(f"training {loaded.model_id} in {args.mode} mode on {len(samples)} samples from {args.data}")

    def report(record: EpochRecord) -> None:
        unit = "round" if options.steps else "epoch"  # under --steps: validation rounds, not passes over the data
        print(f"  {unit} {record.epoch:3d}  loss {record.loss:.4f}  val Dice {record.val_dice:.4f}  "
              f"({record.seconds:.0f} s)", flush=True)

    with StopOnInterrupt() as interrupted:
        result = train(loaded, samples, options, args.out, name=args.name, on_epoch=report, should_stop=interrupted,
                       command="imedsam " + " ".join(sys.argv[1:]))
    print(f"{result.summary}; {result.steps} steps in {result.seconds:.0f} s"
          + (" (interrupted)" if result.cancelled else ""))
    whole = options.mode == "full"
    if result.saved:
        print(f"saved {result.version_path}" + (" (a whole model: use it with --model)" if whole else ""))
    else:
        print("no new version saved: the result is the weights training started from"
              + (" (the masks are what the model already predicts: nothing to learn; correct them where it is "
                 "wrong)" if result.nothing_to_learn else ""))
    if world_size() > 1:  # the ranks' weights must agree: each prints its digest
        digest = hashlib.sha256()
        for key, value in sorted(result.model.network.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        print(f"rank {rank} final weights sha256 {digest.hexdigest()}", flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from src_train.data import load_folder

    from .evaluation import evaluate

    size = parse_size(args.size)
    skipped: list[str] = []
    samples = load_folder(args.images, args.masks, skipped)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"imedsam: note: {len(skipped)} image(s) without a non-empty mask in {args.masks} are not scored: "
              f"{shown}", file=sys.stderr)
    loaded = _load(args)
    if args.uncertainty:
        loaded = loaded.with_uncertainty(args.uncertainty)
    corrector = None
    if args.corrector:
        from .model.corrector import chosen_corrector

        corrector = chosen_corrector(args.corrector, args.model, loaded.weights_sha256)
    metrics = evaluate(Predictor(loaded, zoom=args.zoom, mirror=args.mirror), samples, output_size=size,
                       baselines=args.baselines, corrector=corrector)
    if args.json:
        for row in metrics["rows"]:  # NaN / infinity (e.g. HD95 of an empty mask) as null: strict JSON
            print(json.dumps(json_safe(row), allow_nan=False))
        print(json.dumps(json_safe({k: v for k, v in metrics.items() if k != "rows"}), allow_nan=False))
    else:
        print(f"{loaded.model_id}: {metrics['n']} objects, one tight box each: mean Dice {metrics['dice']:.4f}, "
              f"IoU {metrics['iou']:.4f}, HD95 {metrics['hd95']:.2f} px; coarse Dice {metrics['coarse_dice']:.4f} "
              f"(refinement {100 * (metrics['dice'] - metrics['coarse_dice']):+.2f} points); "
              f"uncertainty AUROC for wrong pixels {metrics['uncertainty_auroc']:.3f}")
        if args.baselines:
            from .model.catalog import REGISTRY

            spec = REGISTRY.get(loaded.model_id)  # demo / tiny: SAM's decoder was never trained, only the heads
            untrained = " (never trained for this model: no reference)" if spec and not (spec.url or spec.lite) else ""
            print(f"  baselines on the same boxes: box as mask Dice {metrics['box_dice']:.4f} "
                  f"(HD95 {metrics['box_hd95']:.2f}), GrabCut Dice {metrics['grabcut_dice']:.4f} "
                  f"(HD95 {metrics['grabcut_hd95']:.2f}), the backbone's own mask decoder Dice "
                  f"{metrics['sam_dice']:.4f} (HD95 {metrics['sam_hd95']:.2f}){untrained}")
        if corrector is not None:
            print(f"  corrector: Dice {metrics['dice']:.4f} -> {metrics['corrected_dice']:.4f}; precision "
                  f"{metrics['precision']:.4f} -> {metrics['corrected_precision']:.4f}, recall "
                  f"{metrics['recall']:.4f} -> {metrics['corrected_recall']:.4f}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one `imedsam: error:` line for a bad command line (sub-commands use it too)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"imedsam: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imedsam", description="I-MedSAM box-prompted medical image segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="architecture and trainable parameters per component")
    _add_model_args(info)
    info.set_defaults(func=cmd_info)

    predict = sub.add_parser("predict", help="segment the object in a box; write mask (+ uncertainty)")
    _add_model_args(predict)
    predict.add_argument("--mirror", action="store_true", help=MIRROR_HELP)
    predict.add_argument("--image", required=True,
                         help="PNG/JPEG/TIFF/NIfTI/.npy image or volume, or a bundled sample: sample:ct_abdomen, "
                              "sample:ct_abdomen/liver_000 (boxes that expert mask and reports Dice)")
    predict.add_argument("--slice", type=int, default=None, help="slice index along z for volumes")
    predict.add_argument("--box", default=None, help="x0,y0,x1,y1 in image pixels (x = column, y = row)")
    predict.add_argument("--out", required=True, help="mask file (.png, .tif, .nii.gz, .npy)")
    predict.add_argument("--uncertainty", default=None, help="also write the uncertainty map here")
    predict.add_argument("--coarse", default=None, help="also write the coarse probability here")
    predict.add_argument("--size", default=None, help="output size H,W (default: the image's own)")
    predict.add_argument("--window", default="auto",
                         help="intensity: auto | mr | minmax | " + " | ".join(f"'{k}'" for k in CT_PRESETS)
                              + " | level,width")
    predict.set_defaults(func=cmd_predict)

    train = sub.add_parser("train", help="fine-tune on an export or an images/ + masks/ folder")
    _add_model_args(train)
    train.add_argument("--data", required=True, help="export folder (prompts.jsonl) or folder with images/, masks/")
    train.add_argument("--mode", default="decoder",
                       choices=["decoder", "adapters", "full", "fine", "corrector", "clicks"],
                       help="decoder (CPU default), adapters (LoRA + FA + decoder), full (every weight), "
                            "fine (the fine INR alone), corrector (a Dual False Corrector on the frozen model), "
                            "clicks (a click refiner on the frozen model, from simulated users)")
    train.add_argument("--out", required=True, help="output folder; versions go to OUT/KIND/NAME/vNNN (KIND: adapters, "
                       "or correctors / click_refiners for those modes)")
    train.add_argument("--name", default="default", help="the result's name, NAME above")
    train.add_argument("--epochs", type=int, default=20,
                       help="passes over the training samples, each ended by a validation (adapters / decoder / full)")
    train.add_argument("--rounds", type=int, default=2,
                       help="clicks mode: rounds of simulated users (each later round clicks on the refiner so far)")
    train.add_argument("--steps", type=int, default=None,
                       help="optimizer steps, instead of --epochs (corrector and clicks modes: default 3000)")
    train.add_argument("--max-seconds", type=float, default=None,
                       help="stop after this long and keep the best validated result (default: no limit)")
    train.add_argument("--seed", type=int, default=0, help="random seed (the held-back split, batches, clicks)")
    train.add_argument("--batch-size", type=int, default=4, help="samples per step (adapters / decoder / full)")
    train.add_argument("--points", type=int, default=1024, help="query points per sample and step")
    train.add_argument("--augment", action="store_true", help="flips, turns, intensity jitter (adapters/full)")
    train.add_argument("--val-fraction", type=float, default=0.2, help="share of samples held back for validation")
    train.add_argument("--clicks", type=float, default=0.0,
                       help="fraction of batches trained with 1-3 simulated clicks per sample (0-1)")
    train.add_argument("--lr-adapters", type=float, default=None,
                       help="learning rate of LoRA and the frequency adapters (default 5e-5)")
    train.add_argument("--sf-fusion", action="store_true",
                       help="add SF-RecSAM's spatial-frequency fusion adapter to every encoder block and train it "
                            "(adapters / full modes; the adapter file brings it along)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="Dice / IoU / HD95 with one tight box per image")
    _add_model_args(evaluate)
    evaluate.add_argument("--mirror", action="store_true", help=MIRROR_HELP)
    evaluate.add_argument("--images", required=True)
    evaluate.add_argument("--masks", required=True)
    evaluate.add_argument("--size", default=None, help="output size H,W (masks are resampled to it)")
    evaluate.add_argument("--json", action="store_true", help="one JSON line per image, then the means")
    evaluate.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default=None,
                          help="uncertainty to score and refine by (default: the model's own, predictive)")
    evaluate.add_argument("--baselines", action="store_true",
                          help="also score the box itself, GrabCut (OpenCV) and the backbone's own SAM mask "
                               "decoder (zero-shot LiteMedSAM for lite) on the same boxes")
    evaluate.add_argument("--corrector", default=None,
                          help="a Dual False Corrector file, or 'bundled' (the one shipped with the model): also "
                               "score the corrected mask (corrected_dice)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)
        warnings.showwarning = show_warning  # one `imedsam: warning:` line each (restored on exit)
        try:
            return args.func(args)
        except (InputError, CheckpointError, ValueError, RuntimeError, MemoryError, OSError) as exc:
            print(f"imedsam: error: {error_message(exc)}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
