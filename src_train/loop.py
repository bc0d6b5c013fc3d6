"""One optimisation loop for every trainer: which parameters train at which learning rate, how far a
run is, the learning-rate schedule, and one AdamW step from a batch.

`trainer.train` (validation rounds, checkpoints, DDP), `fit.fit_decoder` (a quick decoder fit on
encoded examples) and `lite_recipe.fit_heads` (time-budgeted, on cached prompt paths: a custom
forward) all run their steps through `Loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from napari_imedsam.model.imedsam import IMedSAM, TrainOutputs

from .losses import imedsam_loss

DECODER_GROUPS = ("prompt_encoder", "output_upscaling", "coarse_inr", "fine_inr")
Batch = dict[str, Any]  # tensors in `fit.make_batch`'s layout, or whatever a custom `forward` reads


def parameter_groups(network: IMedSAM, mode: str, lr_decoder: float, lr_adapters: float = 0.0,
                     lr_encoder: float = 0.0) -> list[dict]:
    """AdamW parameter groups of a training mode: `fine` the fine INR; `decoder` the prompt encoder,
    upscaling and both INRs; `adapters` also LoRA and the frequency adapters (at `lr_adapters`); `full`
    also every other weight (at `lr_encoder`)."""
    groups = network.parameter_groups()
    if mode == "fine":
        return [{"params": [p for _, p in groups["fine_inr"]], "lr": lr_decoder}]
    decoder = [p for g in DECODER_GROUPS for _, p in groups[g]]
    param_groups = [{"params": decoder, "lr": lr_decoder}]
    if mode in ("adapters", "full"):
        param_groups.append({"params": [p for g in ("lora", "frequency_adapter") for _, p in groups[g]],
                             "lr": lr_adapters})
    if mode == "full":
        chosen = {id(p) for group in param_groups for p in group["params"]}
        rest = [p for p in network.parameters() if id(p) not in chosen]
        param_groups.append({"params": rest, "lr": lr_encoder})
    return param_groups


def run_progress(step: int, total_steps: int, elapsed: float, max_seconds: float | None) -> float:
    """How far a run is, in [0, 1]: by steps, or by time when a time budget ends it sooner. Drives the
    coarse -> fine loss weights and the learning-rate schedule."""
    progress = step / max(1, total_steps - 1)
    if max_seconds:
        progress = max(progress, elapsed / max_seconds)
    return min(progress, 1.0)


def cosine_factor(progress: float, floor: float = 0.1) -> float:
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class TrainStep(nn.Module):
    """One training forward as a module, so DistributedDataParallel can wrap it: `inputs` are
    embeddings (frozen encoder) or pixels (`encode`: the encoder trains too)."""

    def __init__(self, network: nn.Module, encode: bool = False) -> None:
        super().__init__()
        self.network = network
        self.encode = encode

    def forward(self, inputs: torch.Tensor, boxes: torch.Tensor, extent: torch.Tensor, points: torch.Tensor,
                patches: torch.Tensor | None = None, click_coords: torch.Tensor | None = None,
                click_labels: torch.Tensor | None = None) -> TrainOutputs:
        embedding = self.network.encode(inputs) if self.encode else inputs
        clicks = None if click_coords is None else (click_coords, click_labels)
        return self.network.forward_train(embedding, boxes, extent, points, patches, clicks)


@dataclass
class Loop:
    """AdamW over `param_groups` of `network` for `total_steps` steps on batches from `next_batch`
    (`fit.make_batch`'s layout), run through a `TrainStep` (`wrap`ped, e.g. in DDP). Progress is
    by steps, or by `elapsed()` seconds when `max_seconds` is set; `cosine` scales the learning rates
    with it. The time limit is checked before every step after the first, on the same `elapsed()`
    reading the step's progress uses (under DDP one agreed reading per step: every rank stops at the
    same step); `timed_out` says it ended the run. Creating a loop makes its parameters trainable;
    `finish` freezes them again."""

    network: IMedSAM
    param_groups: list[dict]
    total_steps: int
    next_batch: Callable[[], Batch]
    encode: bool = False  # batches hold pixels: the step runs the encoder (with gradients)
    wrap: Callable[[nn.Module], nn.Module] | None = None  # e.g. DistributedDataParallel around the step
    cosine: bool = False
    fine_only: bool = False  # the loss on Dec_f alone (`fine` mode)
    max_seconds: float | None = None
    elapsed: Callable[[], float] = lambda: 0.0
    custom_forward: Callable[[Batch], TrainOutputs] | None = None  # instead of TrainStep (e.g. cached prompts)
    step: int = 0
    timed_out: bool = False  # the time limit ended the run (no further steps)
    module: nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    base_lrs: list[float] = field(init=False)  # the groups' learning rates before the schedule
    _reading: float | None = field(init=False, default=None)  # `run`'s clock reading for the next step

    def __post_init__(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.param_groups)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        step = TrainStep(self.network, self.encode)  # wrapped after requires_grad is set: DDP reads it
        self.module = self.wrap(step) if self.wrap is not None else step

    def progress(self) -> float:
        elapsed = self.elapsed() if self.max_seconds else 0.0
        return run_progress(self.step, self.total_steps, elapsed, self.max_seconds)

    def _step_progress(self) -> float:
        """The progress of the step about to be taken: from `run`'s reading of the clock when it made
        one (so a step costs one reading, one collective under DDP), else a fresh one."""
        reading, self._reading = self._reading, None
        if reading is None:
            return self.progress()
        return run_progress(self.step, self.total_steps, reading, self.max_seconds)

    def _out_of_time(self) -> bool:
        """Read the clock for the next step; True when the time limit is reached (never before the
        run's first step: a run always takes one)."""
        if not self.max_seconds or self.timed_out:
            return self.timed_out
        self._reading = self.elapsed()
        if self.step and self._reading >= self.max_seconds:
            self.timed_out = True
        return self.timed_out

    def forward(self, batch: Batch) -> TrainOutputs:
        if self.custom_forward is not None:
            return self.custom_forward(batch)
        return self.module(batch["embedding"], batch["boxes"], batch["extent"], batch["points"],
                           batch.get("patches"), batch.get("click_coords"), batch.get("click_labels"))

    def one_step(self) -> float:
        """Forward a batch, set the learning rates for the progress, one AdamW step; returns the loss."""
        batch = self.next_batch()
        outputs = self.forward(batch)
        progress = self._step_progress()
        if self.cosine:
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base_lr * cosine_factor(progress)
        loss = imedsam_loss(outputs, batch["labels"], progress=progress, fine_only=self.fine_only)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def run(self, steps: int, should_stop: Callable[[], bool] | None = None,
            on_step: Callable[[int, int], None] | None = None) -> tuple[list[float], bool]:
        """Up to `steps` steps (fewer at the end of the run, or when the time limit is reached: then
        `timed_out`) with the network in training mode, then back in eval mode. Returns (the losses,
        whether `should_stop()` cut it short)."""
        self.network.train()
        losses, stopped = [], False
        for _ in range(min(steps, self.total_steps - self.step)):
            if should_stop and should_stop():
                stopped = True
                break
            if self._out_of_time():
                break
            losses.append(self.one_step())
            if on_step:
                on_step(self.step, self.total_steps)
        self.network.eval()
        return losses, stopped

    def finish(self) -> None:
        """Freeze the trained parameters again."""
        for group in self.param_groups:
            for p in group["params"]:
                p.requires_grad_(False)
