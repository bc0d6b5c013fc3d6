"""One optimisation loop: `fit_decoder` and the trainer take their steps through `loop.Loop`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.export import export_slices
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.weights import trainable_state
from src_train import loop as loop_module
from src_train.data import load_dataset
from src_train.fit import EncodedExample, batches, fit_decoder
from src_train.loop import Loop, cosine_factor, parameter_groups
from src_train.trainer import EpochRecord, TrainOptions, train

from .conftest import untrained
from .test_training import phantom_slices


def encoded_examples(loaded, count: int = 3) -> list[EncodedExample]:
    predictor = Predictor(loaded)
    return [EncodedExample(predictor.embed(image), mask) for image, mask in ellipse_phantoms(count, seed=1)]


@pytest.fixture
def counted_steps(monkeypatch):
    """How many optimizer steps went through `Loop.one_step`."""
    calls = []
    real = Loop.one_step

    def counting(self):
        calls.append(self)
        return real(self)

    monkeypatch.setattr(loop_module.Loop, "one_step", counting)
    return calls


def test_fit_decoder_and_train_take_their_steps_through_the_same_loop(counted_steps, tmp_path):
    loaded = untrained()
    losses = fit_decoder(loaded.network, encoded_examples(loaded), steps=3, batch_size=2, n_points=128)
    assert len(losses) == 3 and len(counted_steps) == 3
    export_slices(tmp_path / "data", phantom_slices(4))
    records = []
    report = train(untrained(), load_dataset(tmp_path / "data"),
                   TrainOptions(mode="decoder", steps=4, validate_every=2, batch_size=2, n_points=128),
                   tmp_path / "out", on_epoch=records.append)
    assert report.steps == 4 and len(counted_steps) == 3 + 4
    assert [r.epoch for r in records] == [1, 2] and all(isinstance(r, EpochRecord) for r in records)
    assert report.history == records and all(np.isfinite(r.loss) and r.seconds >= 0 for r in records)


def test_fit_decoder_trains_the_decoder_and_leaves_the_network_frozen_in_eval():
    loaded = untrained()
    network = loaded.network
    groups = network.parameter_groups()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    losses = fit_decoder(network, encoded_examples(loaded), steps=4, batch_size=2, n_points=128)
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    after = network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    decoder = {n for g in ("prompt_encoder", "output_upscaling", "coarse_inr", "fine_inr") for n, _ in groups[g]}
    assert changed and changed <= decoder  # the encoder, LoRA and frequency adapters are untouched


@pytest.mark.parametrize("cosine", [False, True])
def test_the_loop_schedules_learning_rates_by_progress(cosine):
    loaded = untrained()
    network = loaded.network
    rng = np.random.default_rng(0)
    examples = encoded_examples(loaded, 2)
    next_batch = batches(lambda chosen: [examples[i] for i in chosen], len(examples), rng, 2, 64)
    run = Loop(network, parameter_groups(network, "decoder", lr_decoder=1e-3), 5, next_batch, cosine=cosine)
    assert all(p.requires_grad for group in run.param_groups for p in group["params"])
    losses, stopped = run.run(3)
    assert len(losses) == 3 and not stopped and run.step == 3 and not network.training
    expected = 1e-3 * (cosine_factor(2 / 4) if cosine else 1.0)  # set for the last step taken (progress 2/4)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    losses, stopped = run.run(10, should_stop=lambda: run.step >= 4)  # a cancel between steps
    assert len(losses) == 1 and stopped
    assert run.run(10)[0] and run.step == 5 and run.run(10) == ([], False)  # never past total_steps
    run.finish()
    assert not any(p.requires_grad for p in network.parameters())


@pytest.mark.parametrize("mode", ["decoder", "full"])
def test_train_copies_only_what_it_trains_and_never_changes_its_argument(tmp_path, mode):
    export_slices(tmp_path / "data", phantom_slices(4))
    loaded = untrained()
    state = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    report = train(loaded, load_dataset(tmp_path / "data"),
                   TrainOptions(mode=mode, steps=2, validate_every=2, batch_size=2, n_points=128, keep_start=False),
                   tmp_path / "out")
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loaded.adapter_version == "base" and report.model.adapter_version == str(report.version_path)
    trainable = set(trainable_state(loaded.network))
    original, trained = loaded.network.state_dict(), report.model.network.state_dict()
    shared = {k for k in original if original[k].data_ptr() == trained[k].data_ptr()}
    if mode == "full":  # every weight trains: a whole copy
        assert not shared
    else:  # the frozen backbone is shared, not copied; the trainable tensors are the copy's own
        assert shared == set(original) - trainable


def test_the_time_limit_is_checked_before_every_step_on_the_reading_the_schedule_uses():
    """A fake clock: one second per step taken. With a 2.5 s limit the loop takes steps 1-3 (readings
    0, 1, 2) and stops at the reading of 3, well inside a round of 10; the cosine follows the readings."""
    loaded = untrained()
    network = loaded.network
    examples = encoded_examples(loaded, 2)
    next_batch = batches(lambda chosen: [examples[i] for i in chosen], len(examples), np.random.default_rng(0), 2, 64)
    readings = []

    def clock() -> float:
        readings.append(float(run.step))
        return readings[-1]

    run = Loop(network, parameter_groups(network, "decoder", lr_decoder=1e-3), 100, next_batch, cosine=True,
               max_seconds=2.5, elapsed=clock)
    losses, stopped = run.run(10)
    assert len(losses) == 3 and run.step == 3 and run.timed_out and not stopped
    assert readings == [0.0, 1.0, 2.0, 3.0]  # one reading per step (one collective under DDP), one to stop
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * cosine_factor(2.0 / 2.5))
    assert run.run(10) == ([], False) and len(readings) == 4  # stays stopped, without reading the clock again
    run.finish()


def test_max_seconds_stops_the_trainer_within_a_step_then_validates_and_saves(tmp_path, monkeypatch):
    """`--max-seconds` used to be checked only between epochs, so a run overshot by up to an epoch. With a
    fake clock (one second per step) and a 2.5 s limit, a run of 3 epochs x 8 steps stops after 3 steps,
    inside its first epoch, and still does its end-of-run work: a validation round, a saved version."""
    from src_train import trainer

    export_slices(tmp_path / "data", phantom_slices(10))  # 8 train, 2 held back: 8 steps an epoch at batch 1
    clock = {"seconds": 0.0}
    monkeypatch.setattr(trainer, "_elapsed", lambda start, world, device: clock["seconds"])

    def tick(step: int, total: int) -> None:
        clock["seconds"] += 1.0

    records = []
    options = TrainOptions(mode="decoder", epochs=3, max_seconds=2.5, batch_size=1, n_points=64, keep_start=False)
    report = train(untrained(), load_dataset(tmp_path / "data"), options, tmp_path / "out",
                   on_epoch=records.append, on_step=tick)
    assert report.n_train == 8 and report.steps == 3 and not report.cancelled
    assert [r.epoch for r in records] == [1] and report.history == records  # the partial epoch was validated
    assert report.version_path is not None and report.version_path.is_file()
