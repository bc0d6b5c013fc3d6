"""Training the click refiner on a frozen model (`train --mode clicks`), from simulated users.

The frozen model predicts every training object from its tight box, once. A simulated user then
clicks, as the interactive benchmark does (`evaluation.next_click`: the centre of the largest
remaining error), and also at random deep points of the largest or second-largest error region (so
the refiner does not learn one click position by heart); each click's walker step
(`inference/clicks.correct_step`) gives one example: the refiner's maps after that step, and the
true mask over the refiner's window. The first round's users see the walker alone; each later round's
see the refiner trained so far (what a user of it meets: the next click lands where the refined mask
is still wrong). Loss: BCE + soft Dice of the refined probability. Validation runs the whole
simulated user on held-back images and keeps the weights with the best mean Dice after 1, 3 and 5
clicks; the walker alone (with its uncertainty band, as a user without a refiner gets it) is the
score to beat, and a run that does not beat it says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from napari_imedsam.evaluation import dice, next_click
from napari_imedsam.inference.click_refine import logit, refine_after_click, refiner_maps, refiner_window
from napari_imedsam.inference.clicks import BETA, correct_step
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.windows import intensity_range
from napari_imedsam.model.click_refiner import ClickRefiner, ClickRefinerConfig, save_click_refiner
from napari_imedsam.model.registry import LoadedModel

from .data import Sample, split
from .output import prepare_output, save_result, second_stage_header

SCORED_CLICKS = (1, 3, 5)  # validation: mean Dice after these many clicks


@dataclass
class ClickRefinerOptions:
    steps: int = 3000  # optimizer steps over all rounds
    rounds: int = 2  # round 1: users of the walker alone; later rounds: users of the refiner so far
    batch_size: int = 24
    lr: float = 2e-3
    max_clicks: int = 5
    val_fraction: float = 0.2
    validate_every: int = 500
    seed: int = 0
    max_seconds: float | None = None
    config: ClickRefinerConfig = field(default_factory=ClickRefinerConfig)


@dataclass
class Case:
    """One training object as the frozen model saw it."""

    image01: np.ndarray  # (H, W, 3) float16 in [0, 1], the slice's window applied
    prob: np.ndarray  # the box's refined probability
    uncertainty: np.ndarray
    truth: np.ndarray
    box: np.ndarray

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        r0, r1, c0, c1 = window
        return self.image01[r0:r1, c0:c1].astype(np.float32)


@dataclass
class ClickRefinerReport:
    path: Path
    metrics_before: dict  # the walker alone on the held-back images: Dice after 0, 1, 3, 5 clicks
    metrics: dict  # with the refiner saved
    steps: int
    seconds: float
    helps: bool


def build_cases(loaded: LoadedModel, samples: list[Sample]) -> list[Case]:
    """The frozen model's box-only prediction of each sample, with the predictor settings a user gets."""
    predictor = Predictor(loaded, click_refiner=False)
    cases = []
    for sample in samples:
        result = predictor.predict(sample.image, sample.box_xyxy, window=sample.window)
        image01 = intensity_range(sample.image, sample.window).apply(sample.image).astype(np.float16)
        cases.append(Case(image01, result.refined_prob.astype(np.float32), result.uncertainty.astype(np.float32),
                          sample.mask.astype(bool), np.asarray(sample.box_xyxy, dtype=np.float64)))
    return cases


def random_click(rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], tuple[int, int, bool] | None]:
    """A user who clicks a random deep point of the largest error region (or, 3 times in 10, the second)."""
    def click(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, bool] | None:
        regions = []
        for errors, positive in ((truth & ~prediction, True), (prediction & ~truth, False)):
            labels, count = ndimage.label(errors)
            if count:
                sizes = np.bincount(labels.ravel())[1:]
                regions += [(sizes[i], labels == i + 1, positive) for i in np.argsort(sizes)[::-1][:2]]
        if not regions:
            return None
        regions.sort(key=lambda region: -region[0])
        _, region, positive = regions[1 if len(regions) > 1 and rng.random() < 0.3 else 0]
        depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        candidates = np.argwhere(depth >= max(1.0, 0.5 * depth.max()))
        row, col = candidates[rng.integers(len(candidates))]
        return int(row), int(col), positive
    return click


def simulate(case: Case, refiner: ClickRefiner | None, max_clicks: int, click=next_click,
             examples: list | None = None, config: ClickRefinerConfig | None = None,
             band: bool = False) -> list[float]:
    """A simulated user's Dice after 0..max_clicks clicks (with the walker, then `refiner` if given);
    appends each click's training example, built with `config`, to `examples` if given. `band`: the
    walker frees the doubtful band too, as it does for a user without a refiner (the score to beat)."""
    current = case.prob
    points: list[tuple[float, float, float]] = []
    scores = [dice(current > 0.5, case.truth)]
    for _ in range(max_clicks):
        placed = click(current > 0.5, case.truth)
        if placed is None:
            scores.append(scores[-1])
            continue
        row, col, positive = placed
        points.append((float(col), float(row), 1.0 if positive else 0.0))
        clicks = np.asarray(points)
        walked = correct_step(current, case.read, clicks, BETA, case.uncertainty if band else None)
        if examples is not None:
            examples.append(example(case, walked, clicks, config))
        if refiner is not None and walked is not current:
            walked = refine_after_click(refiner, walked, case.prob, case.uncertainty, case.read, case.box, clicks)
        current = walked
        scores.append(dice(current > 0.5, case.truth))
    return scores


def example(case: Case, walked: np.ndarray, clicks: np.ndarray, config: ClickRefinerConfig):
    """(maps, truth): the refiner's input after a click's walker step, and the true mask's share of each
    resampled pixel over the same window."""
    window = refiner_window(case.box, clicks, walked.shape, config)
    r0, r1, c0, c1 = window
    maps = refiner_maps(case.read(window), case.prob, walked, case.uncertainty, clicks, window, config)
    truth = torch.from_numpy(case.truth[r0:r1, c0:c1].astype(np.float32))[None, None]
    return maps.half(), F.adaptive_avg_pool2d(truth, config.size)[0].half()


def collect(cases: list[Case], refiner: ClickRefiner | None, options: ClickRefinerOptions,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples from every case, for users of `refiner` (None: the walker alone): one who clicks like
    the benchmark, one who clicks at random deep points."""
    examples: list = []
    if refiner is not None:
        refiner.eval()
    for case in cases:
        for click in (next_click, random_click(rng)):
            simulate(case, refiner, options.max_clicks, click, examples, options.config)
    return torch.stack([maps for maps, _ in examples]), torch.stack([truth for _, truth in examples])


def refiner_loss(refiner: ClickRefiner, maps: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the refined probability (the walker's logit plus the refiner's correction)."""
    logits = logit(maps[:, 4:5]) + refiner(maps)
    probability = torch.sigmoid(logits)
    overlap = (probability * truth).sum((1, 2, 3))
    soft_dice = (2 * overlap + 1) / (probability.sum((1, 2, 3)) + truth.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, truth) + (1 - soft_dice).mean()


def validate(refiner: ClickRefiner | None, cases: list[Case], max_clicks: int) -> dict:
    """Mean Dice after 0, 1, 3, 5 clicks of the benchmark's user on `cases`, and their mean over 1, 3, 5."""
    if refiner is not None:
        refiner.eval()
    curves = np.array([simulate(case, refiner, max_clicks, band=refiner is None) for case in cases])
    scores = {f"dice_{n}": float(curves[:, n].mean()) for n in (0, *SCORED_CLICKS) if n <= max_clicks}
    scores["score"] = float(np.mean([scores[f"dice_{n}"] for n in SCORED_CLICKS if n <= max_clicks]))
    return scores


def train_click_refiner(loaded: LoadedModel, samples: list[Sample], options: ClickRefinerOptions,
                        out_dir: str | Path, name: str = "default", on_step: Callable[[int, int], None] | None = None,
                        should_stop: Callable[[], bool] | None = None, command: str = "",
                        log: Callable[[str], None] = lambda message: None) -> ClickRefinerReport:
    """Train a click refiner for the frozen `loaded` model; saved as `OUT/click_refiners/NAME/vNNN.safetensors`."""
    folder = prepare_output(out_dir, name, 4 << 20, kind="click_refiners")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    start = time.perf_counter()
    train_set, val_set = split(samples, options.val_fraction, options.seed)
    log(f"predicting {len(samples)} objects with the frozen model")
    train_cases, val_cases = build_cases(loaded, train_set), build_cases(loaded, val_set)
    refiner = ClickRefiner(options.config)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=options.lr, weight_decay=1e-4)
    before = validate(None, val_cases, options.max_clicks) if val_cases else {}
    best_state, best, best_score = None, before, before.get("score", -1.0)
    step, rounds = 0, max(1, options.rounds)

    def out_of_time() -> bool:
        return bool(options.max_seconds and time.perf_counter() - start > options.max_seconds)

    for round_index in range(rounds):
        if step >= options.steps or out_of_time() or (should_stop and should_stop()):
            break
        maps, truth = collect(train_cases, refiner if round_index else None, options, rng)
        log(f"round {round_index + 1} of {rounds}: {len(maps)} clicks simulated on {len(train_cases)} objects")
        round_end = options.steps * (round_index + 1) // rounds
        refiner.train()
        while step < round_end and not out_of_time() and not (should_stop and should_stop()):
            for group in optimizer.param_groups:  # cosine over all rounds
                group["lr"] = options.lr * 0.5 * (1 + np.cos(np.pi * step / options.steps))
            chosen = torch.from_numpy(rng.integers(0, len(maps), options.batch_size))
            batch, target = maps[chosen].float(), truth[chosen].float()
            flips = rng.random(2) < 0.5  # the maps are mirror-symmetric: so is the task
            dims = [d for d, flip in zip((-1, -2), flips) if flip]
            if dims:
                batch, target = batch.flip(dims), target.flip(dims)
            loss = refiner_loss(refiner, batch, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step:
                on_step(step, options.steps)
            if val_cases and (step % options.validate_every == 0 or step == round_end):
                scores = validate(refiner, val_cases, options.max_clicks)
                refiner.train()
                log(f"step {step}: held-back Dice after 1/3/5 clicks " + " / ".join(
                    f"{scores.get(f'dice_{n}', float('nan')):.4f}" for n in SCORED_CLICKS))
                if scores["score"] > best_score:
                    best_score, best = scores["score"], scores
                    best_state = {k: v.clone() for k, v in refiner.state_dict().items()}
    helps = best_state is not None
    if helps:
        refiner.load_state_dict(best_state)
    elif val_cases:  # nothing beat the walker alone: the file holds the last weights, so say what they score
        best = validate(refiner, val_cases, options.max_clicks)
    header = second_stage_header(loaded, samples, len(train_set), len(val_set), before, best, helps, step,
                                 options, command)
    path = save_result(folder, lambda target, **kw: save_click_refiner(refiner.eval(), target, header))
    return ClickRefinerReport(path, before, best, step, time.perf_counter() - start, helps)
