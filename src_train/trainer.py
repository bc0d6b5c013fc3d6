"""The trainer: decoder / adapters / full / fine modes, validation metrics, versioned checkpoints.

`decoder` (CPU default): frozen encoder, embeddings computed once; trains the prompt encoder,
output upscaling and both INRs. `adapters` (the paper's setting, wants a GPU): LoRA + frequency
adapters too, encoder run every step. `full`: every weight, for a small backbone trained from
scratch. `fine`: the fine INR alone, on the points UGS picks, everything else frozen (a last stage
after `full`: Dec_f learns to correct a settled coarse INR). AdamW with 5e-5 for encoder adapters
and 1e-3 for the decoder parts (full mode trains the encoder's own weights at `lr_encoder`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from napari_imedsam.evaluation import evaluate  # noqa: F401 - also this module's API before evaluation.py
from napari_imedsam.inference.predictor import Embedding, Predictor
from napari_imedsam.inference.preprocess import UNIT, Geometry, normalize_intensity, to_model_input, zoom_region
from napari_imedsam.model.registry import LoadedModel
from napari_imedsam.model.weights import save_adapters, save_model, trainable_state

from .augment import augment
from .data import Sample, manifest_sha256, split
from .fit import DECODER_GROUPS, EncodedExample, make_batch
from .losses import imedsam_loss
from .output import (  # noqa: F401  (MODES, VERSION_PATTERN, next_version_path: this module's API before output.py)
    MODES,
    VERSION_PATTERN,
    check_name,
    check_options,
    next_version_path,
    prepare_output,
    save_result,
)


@dataclass
class TrainOptions:
    mode: str = "decoder"
    epochs: int = 20
    max_seconds: float | None = None
    seed: int = 0
    batch_size: int = 4
    n_points: int = 1024
    lr_adapters: float = 5e-5
    lr_decoder: float = 1e-3
    lr_encoder: float = 3e-4
    val_fraction: float = 0.2
    augment: bool = False  # flips, turns, intensity jitter (modes that train the encoder)
    # How the model is used (see Predictor): None inherits the base model's own setting, so the
    # trained weights are measured and saved for the way the user runs them.
    zoom: bool | None = None  # train on box crops and predict with zoom
    zoom_margin: float | None = None
    cosine: bool = True  # learning rates follow a cosine from 100 % to 10 % over the run
    steps: int | None = None  # total optimizer steps (overrides epochs); validation every `validate_every`
    validate_every: int | None = None  # steps between validations with `steps` (default: a tenth of them)
    keep_start: bool = True  # the starting weights compete with every validation round (never return worse)
    clicks: float = 0.0  # fraction of batches with 1-3 simulated click prompts per example (and looser boxes)
    click_source: str = "errors"  # "errors": where the model's own mask is wrong; "random": on / off the object


def run_progress(step: int, total_steps: int, elapsed: float, max_seconds: float | None) -> float:
    """How far a run is, in [0, 1]: by steps, or by time when a time budget ends it sooner. Drives the
    coarse -> fine loss weights and the learning-rate schedule."""
    progress = step / max(1, total_steps - 1)
    if max_seconds:
        progress = max(progress, elapsed / max_seconds)
    return min(progress, 1.0)


def _elapsed(start: float, world: int, device: torch.device) -> float:
    """Seconds since `start`; under DDP the slowest rank's, so every rank takes the same schedule and
    stops after the same epoch."""
    elapsed = time.perf_counter() - start
    if world > 1:
        shared = torch.tensor([elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        elapsed = float(shared.item())
    return elapsed


def cosine_factor(progress: float, floor: float = 0.1) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@dataclass
class TrainReport:
    version_path: Path
    before: dict
    after: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    n_train: int = 0
    n_val: int = 0  # held-back samples "before" and "after" were measured on
    kept_base: bool = False  # no validation round beat the starting weights: they were kept
    model: LoadedModel | None = None  # the trained model (a new one: `train` never changes its argument)

    @property
    def summary(self) -> str:
        """One line for the user: before -> after on the held-back samples, and how many there were."""
        if not self.n_val:
            return "no held-back samples: Dice before/after not measured (accept more slices)"
        line = (f"Dice on {self.n_val} held-back sample(s): before {self.before['dice']:.3f} -> "
                f"after {self.after['dice']:.3f}")
        if self.kept_base:
            line += " (training did not beat the starting weights on them, so those were kept)"
        if self.n_val < 3:
            line += f"; only {self.n_val} held back, so this is a rough check: add more samples (accept more slices)"
        return line


def _trainable(network, mode: str, options: TrainOptions) -> list[dict]:
    groups = network.parameter_groups()
    if mode == "fine":
        return [{"params": [p for _, p in groups["fine_inr"]], "lr": options.lr_decoder}]
    decoder = [p for g in DECODER_GROUPS for _, p in groups[g]]
    param_groups = [{"params": decoder, "lr": options.lr_decoder}]
    if mode in ("adapters", "full"):
        param_groups.append({"params": [p for g in ("lora", "frequency_adapter") for _, p in groups[g]],
                             "lr": options.lr_adapters})
    if mode == "full":
        chosen = {id(p) for group in param_groups for p in group["params"]}
        rest = [p for p in network.parameters() if id(p) not in chosen]
        param_groups.append({"params": rest, "lr": options.lr_encoder})
    return param_groups


class TrainStep(nn.Module):
    """One training forward as a module, so DistributedDataParallel can wrap it: `inputs` are
    embeddings (decoder mode, frozen encoder) or pixels (adapters/full: the encoder trains too)."""

    def __init__(self, network: nn.Module, encode: bool) -> None:
        super().__init__()
        self.network = network
        self.encode = encode

    def forward(self, inputs: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor, points: torch.Tensor,
                patches: torch.Tensor | None = None, click_coords: torch.Tensor | None = None,
                click_labels: torch.Tensor | None = None):
        embedding = self.network.encode(inputs) if self.encode else inputs
        clicks = None if click_coords is None else (click_coords, click_labels)
        return self.network.forward_train(embedding, boxes, extent, points, patches, clicks)


def distributed_rank() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def zoom_samples(samples: list[Sample], margin: float) -> list[Sample]:
    """Each sample cropped to its box plus `margin`, after normalising the whole slice (as zoomed
    inference does); the crops are (h, w, 3) floats in [0, 1], encoded with the `unit` window."""
    cropped = []
    for sample in samples:
        r0, r1, c0, c1 = zoom_region(sample.box_xyxy, sample.mask.shape, margin)
        cropped.append(Sample(normalize_intensity(sample.image, sample.window)[r0:r1, c0:c1],
                              sample.mask[r0:r1, c0:c1], sample.box_xyxy - np.array([c0, r0, c0, r0]), sample.name,
                              window=UNIT))
    return cropped


def _pixels(sample: Sample, predictor: Predictor) -> Embedding:
    """Encoder input pixels standing in for an embedding (the encoder trains), plus the normalised image."""
    window = UNIT if predictor.zoom else sample.window
    return _pixel_embedding(normalize_intensity(sample.image, window), predictor)


def _pixel_embedding(image01: np.ndarray, predictor: Predictor) -> Embedding:
    geometry = Geometry(image01.shape[0], image01.shape[1], predictor.network.config.encoder.img_size)
    kept = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return Embedding(to_model_input(image01, geometry), geometry, (), kept)


def _augmented_example(sample: Sample, predictor: Predictor, rng: np.random.Generator) -> EncodedExample:
    window = UNIT if predictor.zoom else sample.window
    image, mask, box = augment(normalize_intensity(sample.image, window), sample.mask, sample.box_xyxy, rng)
    return EncodedExample(_pixel_embedding(np.ascontiguousarray(image, dtype=np.float32), predictor), mask, box)


def train(loaded: LoadedModel, samples: list[Sample], options: TrainOptions, out_dir: str | Path,
          name: str = "default", on_epoch: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, command: str = "",
          on_step: Callable[[int, int], None] | None = None) -> TrainReport:
    """Fit a copy of `loaded`, validate each epoch, keep the best weights (the starting ones included),
    save them as a new version and return them in the report (`report.model`); `loaded` itself is
    never changed. `on_step(step, total)` reports progress; `should_stop()` is checked every step."""
    check_options(options)
    loaded = copy.deepcopy(loaded)
    rank, world = distributed_rank()
    if rank == 0:  # before any work: the result can be written (folder, permissions, free space)
        saved = loaded.network.state_dict() if options.mode == "full" else trainable_state(loaded.network)
        prepare_output(out_dir, name, sum(t.numel() * t.element_size() for t in saved.values()))
    torch.manual_seed(options.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    rng = np.random.default_rng(options.seed + rank)  # each rank draws its own batches
    network = loaded.network
    train_set, val_set = split(samples, options.val_fraction, options.seed)
    zoom = loaded.zoom if options.zoom is None else bool(options.zoom)
    zoom_margin = loaded.zoom_margin if options.zoom_margin is None else float(options.zoom_margin)
    loaded.zoom, loaded.zoom_margin = zoom, zoom_margin
    if world > 1:  # every rank starts from rank 0's weights: "before" and the kept start are the same everywhere
        with torch.no_grad():
            for tensor in network.state_dict().values():
                dist.broadcast(tensor, src=0)
    predictor = Predictor(loaded)
    before = evaluate(predictor, val_set) if val_set else {}
    if zoom:
        train_set = zoom_samples(train_set, zoom_margin)

    frozen_encoder = options.mode in ("decoder", "fine")
    if frozen_encoder:
        encoded = [EncodedExample(predictor.embed(s.image, UNIT if zoom else s.window), s.mask, s.box_xyxy)
                   for s in train_set]
    else:
        pixels = [_pixels(s, predictor) for s in train_set]
    param_groups = _trainable(network, options.mode, options)
    for group in param_groups:
        for p in group["params"]:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(param_groups)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step_module: nn.Module = TrainStep(network, encode=not frozen_encoder)
    if world > 1:  # gradients are averaged across ranks by DDP
        step_module = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    steps_per_epoch = max(1, math.ceil(len(train_set) / options.batch_size))
    epochs = options.epochs
    if options.steps:
        steps_per_epoch = options.validate_every or max(1, options.steps // 10)
        epochs = math.ceil(options.steps / steps_per_epoch)
    total_steps = options.steps or steps_per_epoch * epochs
    # The starting weights compete too: a run that does not beat them on the held-back samples keeps them.
    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    best_dice = before["dice"] if val_set and options.keep_start else -float("inf")
    history, kept_base = [], True
    start, step, cancelled = time.perf_counter(), 0, False
    for epoch in range(epochs):
        network.train()
        losses = []
        for _ in range(min(steps_per_epoch, total_steps - step)):
            if should_stop and should_stop():
                cancelled = True
                break
            chosen = rng.integers(0, len(train_set), options.batch_size)
            if frozen_encoder:
                batch_examples = [encoded[i] for i in chosen]
            elif options.augment:  # fresh pixels each step; TrainStep encodes them with gradients
                batch_examples = [_augmented_example(train_set[i], predictor, rng) for i in chosen]
            else:  # pixels stand in for embeddings; TrainStep encodes them with gradients
                batch_examples = [EncodedExample(pixels[i], train_set[i].mask, train_set[i].box_xyxy) for i in chosen]
            batch = make_batch(batch_examples, rng, options.n_points, device=loaded.device,
                               patch_size=network.config.decoder.fine_image_patch, clicks=options.clicks,
                               network=network if options.click_source == "errors" else None,
                               encode=not frozen_encoder)
            outputs = step_module(batch["embedding"], batch["boxes"], batch["extent"], batch["points"],
                                  batch.get("patches"), batch.get("click_coords"), batch.get("click_labels"))
            elapsed = _elapsed(start, world, loaded.device) if options.max_seconds else 0.0
            progress = run_progress(step, total_steps, elapsed, options.max_seconds)
            if options.cosine:
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr * cosine_factor(progress)
            loss = imedsam_loss(outputs, batch["labels"], progress=progress, fine_only=options.mode == "fine")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if on_step:
                on_step(step, total_steps)
        network.eval()
        if not losses:
            break
        if not frozen_encoder:  # the encoder changed: embeddings must be recomputed
            predictor = Predictor(loaded)
        metrics = evaluate(predictor, val_set) if val_set else {"dice": -float(np.mean(losses))}
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": metrics["dice"],
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if metrics["dice"] > best_dice:
            best_dice, kept_base = metrics["dice"], False
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        if cancelled or (should_stop and should_stop()):
            cancelled = True
            break
        if options.max_seconds and _elapsed(start, world, loaded.device) > options.max_seconds:
            break
    for group in param_groups:
        for p in group["params"]:
            p.requires_grad_(False)
    network.load_state_dict(best_state)
    network.eval()
    after = evaluate(predictor if frozen_encoder else Predictor(loaded), val_set) if val_set else {}
    header = {"base_model": loaded.model_id, "base_sha256": loaded.weights_sha256, "mode": options.mode,
              "options": asdict(options), "data_manifest_sha256": manifest_sha256(samples),
              "n_train": len(train_set), "n_val": len(val_set), "command": command,
              "metrics": {k: after.get(k) for k in ("dice", "iou", "hd95", "coarse_dice")},
              "metrics_before": {k: before.get(k) for k in ("dice", "iou", "hd95")},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cancelled": cancelled,
              "kept_base": kept_base, "inference": {"zoom": zoom, "zoom_margin": zoom_margin,
                                                   "prompt_clicks": loaded.prompt_clicks or options.clicks > 0}}
    folder = Path(out_dir) / "adapters" / check_name(name)
    if rank == 0:  # a new version, never overwriting one (concurrent runs), rescued if the disk filled up
        write = save_model if options.mode == "full" else save_adapters
        path = save_result(folder, lambda target, **kw: write(network, target, header, **kw))
    if world > 1:
        dist.barrier()
    if rank != 0:
        path = max(folder.glob("v*.safetensors"))
    loaded.adapter_version = str(path)
    return TrainReport(path, before, after, history, step, time.perf_counter() - start, cancelled,
                       n_train=len(train_set), n_val=len(val_set), kept_base=kept_base and bool(val_set),
                       model=loaded)
