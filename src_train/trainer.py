"""The trainer: decoder / adapters / full / fine modes, validation metrics, versioned checkpoints.

`decoder` (CPU default): frozen encoder, embeddings computed once; trains the prompt encoder,
output upscaling and both INRs. `adapters` (the paper's setting, wants a GPU): LoRA + frequency
adapters too, encoder run every step. `full`: every weight, for a small backbone trained from
scratch. `fine`: the fine INR alone, on the points UGS picks, everything else frozen (a last stage
after `full`: Dec_f learns to correct a settled coarse INR). AdamW with 5e-5 for encoder adapters
and 1e-3 for the decoder parts (full mode trains the encoder's own weights at `lr_encoder`).
The optimisation itself is `loop.Loop`, shared with `fit.fit_decoder`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from napari_imedsam.errors import InputError
from napari_imedsam.evaluation import evaluate  # noqa: F401 - also this module's API before evaluation.py
from napari_imedsam.inference.predictor import Embedding, Predictor
from napari_imedsam.inference.preprocess import UNIT, Geometry, normalize_intensity, to_model_input, zoom_region
from napari_imedsam.model.imedsam import IMedSAM
from napari_imedsam.model.registry import LoadedModel
from napari_imedsam.model.weights import copy_network, save_adapters, save_model, trainable_state

from .augment import augment
from .data import Sample, manifest_sha256, split
from .fit import EncodedExample, batches
from .loop import Batch, Loop, parameter_groups
from .output import (  # noqa: F401  (MODES, VERSION_PATTERN, next_version_path: this module's API before output.py)
    MODES,
    VERSION_PATTERN,
    check_name,
    check_options,
    missing_folders,
    next_version_path,
    prepare_output,
    remove_if_empty,
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
    add_sf_fusion: bool = False  # add SF-RecSAM's fusion adapters to the encoder first (adapters / full modes)


def _elapsed(start: float, world: int, device: torch.device) -> float:
    """Seconds since `start`; under DDP the slowest rank's, so every rank takes the same schedule and
    stops after the same step."""
    elapsed = time.perf_counter() - start
    if world > 1:
        shared = torch.tensor([elapsed], dtype=torch.float64, device=device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        elapsed = float(shared.item())
    return elapsed


@dataclass
class EpochRecord:
    """One validation round, as `on_epoch` receives it and `TrainReport.history` keeps it."""

    epoch: int  # 1, 2, …
    loss: float  # mean training loss over the round's steps
    val_dice: float  # Dice on the held-back samples (minus the mean loss when none are held back)
    seconds: float  # since training started


@dataclass
class TrainReport:
    version_path: Path | None  # None: the result is the starting weights, so no new version was saved
    before: dict
    after: dict
    history: list[EpochRecord] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    n_train: int = 0
    n_val: int = 0  # held-back samples "before" and "after" were measured on
    kept_base: bool = False  # no validation round beat the starting weights: they were kept
    model: LoadedModel | None = None  # the resulting model (a new one: `train` never changes its argument)

    @property
    def saved(self) -> bool:
        """Whether the run wrote a new version (not when it ended with the weights it started from)."""
        return self.version_path is not None

    @property
    def nothing_to_learn(self) -> bool:
        """The starting weights were kept and already scored (almost) 1 on the held-back samples: the
        accepted masks are the model's own output, uncorrected."""
        return self.kept_base and self.before.get("dice", 0.0) >= 0.999

    @property
    def summary(self) -> str:
        """One line for the user: before -> after on the held-back samples, and how many there were."""
        if not self.n_val:
            return "no held-back samples: Dice before/after not measured (accept more slices)"
        line = (f"Dice on {self.n_val} held-back sample(s): before {self.before['dice']:.3f} -> "
                f"after {self.after['dice']:.3f}")
        if self.kept_base:
            trained = [record.val_dice for record in self.history]
            reached = f"the trained weights reached {max(trained):.3f} at best, no better" if trained else \
                "training did not beat the starting weights on them"
            line += f" ({reached}, so the starting weights were kept)"
        if self.n_val < 3:
            line += f"; only {self.n_val} held back, so this is a rough check: add more samples (accept more slices)"
        return line


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


def _batch_source(train_set: list[Sample], predictor: Predictor, options: TrainOptions, rng: np.random.Generator,
                  encode: bool) -> Callable[[], Batch]:
    """Training batches: cached embeddings (frozen encoder), or pixels the step encodes with gradients
    (`encode`; augmented afresh each step with `options.augment`)."""
    encoded = None if encode else [
        EncodedExample(predictor.embed(s.image, UNIT if predictor.zoom else s.window), s.mask, s.box_xyxy)
        for s in train_set]
    pixels = [_pixels(s, predictor) for s in train_set] if encode and not options.augment else None

    def pick(chosen: np.ndarray) -> list[EncodedExample]:
        if encoded is not None:
            return [encoded[i] for i in chosen]
        if pixels is None:  # fresh pixels each step
            return [_augmented_example(train_set[i], predictor, rng) for i in chosen]
        return [EncodedExample(pixels[i], train_set[i].mask, train_set[i].box_xyxy) for i in chosen]

    network = predictor.network
    return batches(pick, len(train_set), rng, options.batch_size, options.n_points, device=predictor.device,
                   patch_size=network.config.decoder.fine_image_patch, clicks=options.clicks,
                   network=network if options.click_source == "errors" else None, encode=encode)


def _schedule(options: TrainOptions, n_train: int) -> tuple[int, int, int]:
    """(steps per validation round, rounds, total steps): an epoch a round, or `steps` in rounds of
    `validate_every`."""
    steps_per_epoch = max(1, math.ceil(n_train / options.batch_size))
    epochs = options.epochs
    if options.steps:
        steps_per_epoch = options.validate_every or max(1, options.steps // 10)
        epochs = math.ceil(options.steps / steps_per_epoch)
    return steps_per_epoch, epochs, options.steps or steps_per_epoch * epochs


def _trained_state(network: IMedSAM, mode: str) -> dict[str, torch.Tensor]:
    """What training changes (and saves): every tensor in `full` mode, else the trainable ones."""
    return network.state_dict() if mode == "full" else trainable_state(network)


def _snapshot(network: IMedSAM, mode: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _trained_state(network, mode).items()}


def _header(loaded: LoadedModel, samples: list[Sample], options: TrainOptions, n_train: int, n_val: int,
            before: dict, after: dict, command: str, cancelled: bool, kept_base: bool) -> dict:
    return {"base_model": loaded.model_id, "base_sha256": loaded.weights_sha256, "mode": options.mode,
            "options": asdict(options), "data_manifest_sha256": manifest_sha256(samples),
            "n_train": n_train, "n_val": n_val, "command": command,
            "metrics": {k: after.get(k) for k in ("dice", "iou", "hd95", "coarse_dice")},
            "metrics_before": {k: before.get(k) for k in ("dice", "iou", "hd95")},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cancelled": cancelled,
            "kept_base": kept_base, "inference": {"zoom": loaded.zoom, "zoom_margin": loaded.zoom_margin,
                                                 "prompt_clicks": loaded.prompt_clicks or options.clicks > 0}}


def _agreed(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's `flag` on every rank (under DDP), so they all take the same branch."""
    if world > 1:
        shared = torch.tensor([int(flag)], device=device)
        dist.broadcast(shared, src=0)
        flag = bool(shared.item())
    return flag


def _save(loaded: LoadedModel, header: dict, out_dir: str | Path, name: str, mode: str, rank: int, world: int
          ) -> Path:
    """Write the result as a new version (rank 0; never overwriting one, rescued if the disk filled up);
    every rank returns its path."""
    folder = Path(out_dir) / "adapters" / check_name(name)
    if rank == 0:
        write = save_model if mode == "full" else save_adapters
        path = save_result(folder, lambda target, **kw: write(loaded.network, target, header, **kw))
    if world > 1:
        dist.barrier()
    if rank != 0:
        path = max(folder.glob("v*.safetensors"))
    return path


def train(loaded: LoadedModel, samples: list[Sample], options: TrainOptions, out_dir: str | Path,
          name: str = "default", on_epoch: Callable[[EpochRecord], None] | None = None,
          should_stop: Callable[[], bool] | None = None, command: str = "",
          on_step: Callable[[int, int], None] | None = None) -> TrainReport:
    """Fit a copy of `loaded`, validate each epoch, keep the best weights (the starting ones included),
    save them as a new version and return them in the report (`report.model`); `loaded` itself is
    never changed (the copy shares its frozen tensors; `full` mode, which trains them all, copies all).
    When the best weights are the starting ones, nothing is saved (`report.version_path` is None).
    `on_step(step, total)` reports progress; `should_stop()` and `max_seconds` are checked every step."""
    check_options(options)
    rank, world = distributed_rank()
    loaded = replace(loaded, network=copy_network(loaded.network, share_frozen=options.mode != "full"),
                     zoom=loaded.zoom if options.zoom is None else bool(options.zoom),
                     zoom_margin=loaded.zoom_margin if options.zoom_margin is None else float(options.zoom_margin))
    network = loaded.network
    if options.add_sf_fusion and not network.config.encoder.sf_fusion:
        try:
            network.add_sf_fusion(network.config.encoder.sf_hidden)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    created = []  # the output folders this run makes: taken back if it saves nothing
    if rank == 0:  # before any work: the result can be written (folder, permissions, free space)
        saved = _trained_state(network, options.mode).values()
        created = missing_folders(out_dir, name)
        prepare_output(out_dir, name, sum(t.numel() * t.element_size() for t in saved))
    torch.manual_seed(options.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    rng = np.random.default_rng(options.seed + rank)  # each rank draws its own batches
    train_set, val_set = split(samples, options.val_fraction, options.seed)
    if world > 1:  # every rank starts from rank 0's weights: "before" and the kept start are the same everywhere
        with torch.no_grad():  # (the frozen tensors shared with `loaded` are the same file's on every rank)
            for tensor in network.state_dict().values():
                dist.broadcast(tensor, src=0)
    predictor = Predictor(loaded)
    before = evaluate(predictor, val_set) if val_set else {}
    if loaded.zoom:
        train_set = zoom_samples(train_set, loaded.zoom_margin)
    encode = options.mode not in ("decoder", "fine")  # the encoder trains: the step encodes pixels
    next_batch = _batch_source(train_set, predictor, options, rng, encode)
    steps_per_epoch, epochs, total_steps = _schedule(options, len(train_set))
    start = time.perf_counter()
    def ddp(step: nn.Module) -> nn.Module:  # gradients are averaged across ranks
        return nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)

    loop = Loop(network, parameter_groups(network, options.mode, options.lr_decoder, options.lr_adapters,
                                          options.lr_encoder),
                total_steps, next_batch, encode=encode, wrap=ddp if world > 1 else None, cosine=options.cosine,
                fine_only=options.mode == "fine", max_seconds=options.max_seconds,
                elapsed=lambda: _elapsed(start, world, loaded.device))
    # The starting weights compete too: a run that does not beat them on the held-back samples keeps them.
    best_state = _snapshot(network, options.mode)
    best_dice = before["dice"] if val_set and options.keep_start else -float("inf")
    history: list[EpochRecord] = []
    kept_base, cancelled = True, False
    for epoch in range(epochs):
        losses, cancelled = loop.run(steps_per_epoch, should_stop, on_step)
        if not losses:
            break
        if encode:  # the encoder changed: embeddings must be recomputed
            predictor = Predictor(loaded)
        metrics = evaluate(predictor, val_set) if val_set else {"dice": -float(np.mean(losses))}
        record = EpochRecord(epoch + 1, float(np.mean(losses)), metrics["dice"], time.perf_counter() - start)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if metrics["dice"] > best_dice:
            best_dice, kept_base = metrics["dice"], False
            best_state = _snapshot(network, options.mode)
        if cancelled or (should_stop and should_stop()):
            cancelled = True
            break
        if loop.timed_out:  # checked before every step, on a reading all ranks share: they stop together
            break
    loop.finish()
    network.load_state_dict(best_state, strict=options.mode == "full")
    network.eval()
    if kept_base:  # the starting weights are back: `before` measured exactly these (no second pass)
        after = dict(before)
    else:
        after = evaluate(Predictor(loaded) if encode else predictor, val_set) if val_set else {}
    # `kept_base`: no round replaced the starting snapshot (none beat it, or no step ran), so the
    # result is the weights the run started from: a new version would only duplicate them.
    path = None
    if not _agreed(kept_base, world, loaded.device):
        header = _header(loaded, samples, options, len(train_set), len(val_set), before, after, command, cancelled,
                         kept_base)
        path = _save(loaded, header, out_dir, name, options.mode, rank, world)
        loaded = replace(loaded, adapter_version=str(path))
    else:
        remove_if_empty(created)
    return TrainReport(path, before, after, history, loop.step, time.perf_counter() - start, cancelled,
                       n_train=len(train_set), n_val=len(val_set), kept_base=kept_base and bool(val_set),
                       model=loaded)
