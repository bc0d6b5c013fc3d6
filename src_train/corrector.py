"""Second-stage training of the Dual False Corrector on a frozen segmentation model (`corrector` mode).

The frozen model predicts each training object from its tight box and from jittered boxes (so the
corrector sees the kinds of mistakes the model makes), with the predictor settings a user gets; each
prediction's region maps are resampled to the corrector's size once and kept, with the expert mask
averaged onto the same grid. Every batch is augmented (flips; the image's gamma, contrast,
brightness and noise; the probability's temperature; the uncertainty's scale), so a corrector does
not learn one scanner's look or one model's confidence. The loss has SF-RecSAM's three parts: a
segmentation loss (BCE + Dice) on the corrected probability (refined foreground kept unless the
false-positive head flips it, background added where the false-negative head does), a correction
loss for each branch (BCE of its flip logit against "this pixel is really wrong", on foreground for
the false-positive branch and background for the false-negative one), and an uncertainty-guided
weight on the correction losses (1 + uncertainty / 0.25: the base is frozen, so its uncertainty
cannot be trained; the corrector is pushed hardest where the model doubts most). The corrector
never starts worse than "no correction": validation compares against the refined mask, and a run
that does not beat it says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from napari_imedsam.inference.click_refine import logit
from napari_imedsam.inference.correction import corrector_region, region_maps
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.model.corrector import CorrectorConfig, DualFalseCorrector, resample, save_corrector
from napari_imedsam.model.registry import LoadedModel

from .data import Sample, split
from .output import prepare_output, save_result, second_stage_header
from .points import jitter_box

_clock = time.perf_counter  # seconds, for `max_seconds` (a module attribute: tests replace it)


@dataclass
class CorrectorOptions:
    steps: int = 3000
    batch_size: int = 24
    lr: float = 2e-3  # cosine-annealed to 0 over `steps`
    seed: int = 0
    val_fraction: float = 0.2
    boxes_per_sample: int = 2  # the tight box plus jittered ones
    box_jitter: float = 0.05
    augment: bool = True
    validate_every: int = 250
    max_seconds: float | None = None
    config: CorrectorConfig = field(default_factory=CorrectorConfig)


@dataclass
class RegionExample:
    maps: torch.Tensor  # (6, S, S)
    truth: torch.Tensor  # (S, S): the expert mask's share of each resampled pixel
    suspicious: torch.Tensor  # (S, S) bool


@dataclass
class CorrectorReport:
    path: Path
    before: dict  # refined mask on the held-back regions: dice, precision, recall
    after: dict  # corrected mask on the same regions
    steps: int
    seconds: float
    helps: bool


def region_example(corrector: DualFalseCorrector, prediction, image, truth: np.ndarray, window) -> RegionExample:
    """One prediction's corrector input and targets at the corrector's size."""
    config = corrector.config
    r0, r1, c0, c1 = region = corrector_region(corrector, prediction)
    maps = resample(region_maps(prediction, image, window, region), (config.size, config.size))[0]
    crop = torch.from_numpy(truth[r0:r1, c0:c1].astype(np.float32))[None, None]
    target = F.adaptive_avg_pool2d(crop, config.size)[0, 0] if min(crop.shape[-2:]) >= config.size else \
        F.interpolate(crop, size=(config.size, config.size), mode="bilinear", align_corners=False)[0, 0]
    flagged = (maps[4] * 0.25 > config.threshold).float()[None, None]
    doubt = F.max_pool2d(flagged, 3, stride=1, padding=1)[0, 0] > 0
    return RegionExample(maps, target, doubt)


def build_examples(predictor: Predictor, corrector: DualFalseCorrector, samples: list[Sample], boxes_per_sample: int,
                   box_jitter: float, rng: np.random.Generator) -> list[RegionExample]:
    examples = []
    for sample in samples:
        boxes = [np.asarray(sample.box_xyxy, float)]
        boxes += [jitter_box(boxes[0], sample.mask.shape, rng, box_jitter) for _ in range(boxes_per_sample - 1)]
        for box in boxes:
            prediction = predictor.predict(sample.image, box, window=sample.window)
            examples.append(region_example(corrector, prediction, sample.image, sample.mask > 0, sample.window))
    return examples


def augment(maps: torch.Tensor, truth: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (B, 6, S, S), (B, S, S) flipped and with its image, probability and uncertainty jittered."""
    batch = maps.shape[0]

    def normal(scale: float) -> torch.Tensor:
        return torch.randn(batch, 1, 1, 1, generator=generator) * scale

    if torch.rand((), generator=generator) < 0.5:
        maps, truth = maps.flip(-1), truth.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        maps, truth = maps.flip(-2), truth.flip(-2)
    image = maps[:, :3].clamp(0, 1) ** torch.exp(normal(0.3)) * (1 + normal(0.2)) + normal(0.1)
    image = image + 0.02 * torch.randn(image.shape, generator=generator)
    probability = torch.sigmoid(logit(maps[:, 3:4]) * torch.exp(normal(0.3)))
    doubt = (maps[:, 4:5] * torch.exp(normal(0.3))).clamp(0, 1)
    return torch.cat([image, probability, doubt, maps[:, 5:]], 1), truth


def corrected_probability(maps: torch.Tensor, fp_logit: torch.Tensor, fn_logit: torch.Tensor) -> torch.Tensor:
    """Soft corrected mask: refined foreground kept unless flipped, background added where flipped."""
    refined = maps[:, 3]
    return refined * (1 - torch.sigmoid(fp_logit)) + (1 - refined) * torch.sigmoid(fn_logit)


def corrector_loss(fp_logit: torch.Tensor, fn_logit: torch.Tensor, maps: torch.Tensor,
                   truth: torch.Tensor) -> torch.Tensor:
    foreground = (maps[:, 3] > 0.5).float()
    weight = 1.0 + maps[:, 4]  # uncertainty / 0.25 in [0, 1]
    losses = []
    for flip_logit, where, target in ((fp_logit, foreground, truth < 0.5), (fn_logit, 1 - foreground, truth > 0.5)):
        per_pixel = F.binary_cross_entropy_with_logits(flip_logit, target.float(), reduction="none")
        losses.append((per_pixel * weight * where).sum() / (weight * where).sum().clamp(min=1.0))
    corrected = corrected_probability(maps, fp_logit, fn_logit).clamp(1e-6, 1 - 1e-6)
    intersection = (corrected * truth).sum(dim=(1, 2))
    soft_dice = 1 - (2 * intersection + 1) / (corrected.sum(dim=(1, 2)) + truth.sum(dim=(1, 2)) + 1)
    segmentation = F.binary_cross_entropy(corrected, truth) + soft_dice.mean()
    return segmentation + 0.5 * sum(losses)


def region_scores(masks: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """Mean Dice, precision and recall over regions."""
    dice, precision, recall = [], [], []
    for mask, truth in zip(masks, truths):
        hit = float((mask & truth).sum())
        dice.append(2 * hit / max(1.0, float(mask.sum() + truth.sum())))
        precision.append(hit / max(1.0, float(mask.sum())))
        recall.append(hit / max(1.0, float(truth.sum())))
    return {"dice": float(np.mean(dice)), "precision": float(np.mean(precision)), "recall": float(np.mean(recall))}


@torch.no_grad()
def validate(corrector: DualFalseCorrector, examples: list[RegionExample]) -> tuple[dict, dict]:
    """(refined, corrected) scores on held-back regions at the corrector's size (in eval mode)."""
    corrector.eval()
    refined, corrected, truths = [], [], []
    for start in range(0, len(examples), 64):
        chunk = examples[start:start + 64]
        fp_logits, fn_logits = corrector(torch.stack([example.maps for example in chunk]))
        for example, fp_logit, fn_logit in zip(chunk, fp_logits, fn_logits):
            keep = example.maps[3] > 0.5
            flip_off = example.suspicious & keep & (torch.sigmoid(fp_logit) > 0.5)
            flip_on = example.suspicious & ~keep & (torch.sigmoid(fn_logit) > 0.5)
            refined.append(keep.numpy())
            corrected.append(((keep & ~flip_off) | flip_on).numpy())
            truths.append(example.truth.numpy() > 0.5)
    return region_scores(refined, truths), region_scores(corrected, truths)


def train_corrector(loaded: LoadedModel, samples: list[Sample], options: CorrectorOptions, out_dir: str | Path,
                    name: str = "default", on_step: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, command: str = "") -> CorrectorReport:
    """Train a corrector for the frozen `loaded` model and save it as `OUT/correctors/NAME/vNNN.safetensors`."""
    folder = prepare_output(out_dir, name, 4 << 20, kind="correctors")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    predictor = Predictor(loaded)
    corrector = DualFalseCorrector(options.config)
    train_set, val_set = split(samples, options.val_fraction, options.seed)
    train_examples = build_examples(predictor, corrector, train_set, options.boxes_per_sample, options.box_jitter, rng)
    val_examples = build_examples(predictor, corrector, val_set, 1, options.box_jitter, rng)
    optimizer = torch.optim.AdamW(corrector.parameters(), lr=options.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: 0.5 * (1 + math.cos(math.pi * done
                                                                                              / options.steps)))
    before, best_after = validate(corrector, val_examples) if val_examples else ({}, {})
    best_state, best_dice = None, before.get("dice", -1.0)
    start, step = _clock(), 0
    stopping = bool(should_stop and should_stop())
    while step < options.steps and not stopping:
        chosen = rng.integers(0, len(train_examples), options.batch_size)
        maps = torch.stack([train_examples[i].maps for i in chosen])
        truth = torch.stack([train_examples[i].truth for i in chosen])
        if options.augment:
            maps, truth = augment(maps, truth, generator)
        corrector.train()
        fp_logit, fn_logit = corrector(maps)
        loss = corrector_loss(fp_logit, fn_logit, maps, truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if on_step:
            on_step(step, options.steps)
        # the time limit is checked after every step; the last step is validated however the run ends
        stopping = bool(should_stop and should_stop())
        out_of_time = bool(options.max_seconds) and _clock() - start > options.max_seconds
        if val_examples and (step % options.validate_every == 0 or step == options.steps or stopping or out_of_time):
            refined, after = validate(corrector, val_examples)
            if after["dice"] > best_dice:
                best_dice, best_after = after["dice"], after
                best_state = {k: v.clone() for k, v in corrector.state_dict().items()}
        if out_of_time:
            break
    helps = best_state is not None
    if helps:
        corrector.load_state_dict(best_state)
    elif val_examples:  # nothing beat "no correction": the file holds the last weights, so say what they score
        best_after = validate(corrector, val_examples)[1]
    header = second_stage_header(loaded, samples, len(train_set), len(val_set), before, best_after, helps, step,
                                 options, command)
    path = save_result(folder, lambda target, **kw: save_corrector(corrector.eval(), target, header))
    return CorrectorReport(path, before, best_after, step, _clock() - start, helps)
