"""Export layout and atomicity, dataset round trip, metrics, trainer with versioned checkpoints, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_imedsam.cli import main
from napari_imedsam.evaluation import dice, hd95, iou
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.export import ExportSlice, export_slices, read_prompts
from napari_imedsam.io.phantoms import ellipse_phantoms
from napari_imedsam.model.weights import read_safetensors
from src_train.data import load_dataset, load_export, split
from src_train.points import box_of_mask
from src_train.trainer import TrainOptions, next_version_path, train

from .conftest import phantom_folders, untrained


def phantom_slices(n: int, seed: int = 0) -> list[ExportSlice]:
    slices = []
    for image, mask in ellipse_phantoms(n, seed=seed):
        labels = mask.astype(np.int32) * 2
        slices.append(ExportSlice(image, labels, {2: box_of_mask(mask) + [-1, -1, 1, 1]}, source="phantom.nii.gz",
                                  slice_index=3, axis=0, model="tiny", spacing=(0.8, 0.7)))
    return slices


def test_export_writes_nnunet_layout_and_appends(tmp_path):
    first = export_slices(tmp_path, phantom_slices(2))
    second = export_slices(tmp_path, phantom_slices(1, seed=1))
    assert first == ["imedsam_00001", "imedsam_00002"] and second == ["imedsam_00003"]
    written = sorted(p.name for p in (tmp_path / "imagesTr").iterdir())
    assert written == [f"imedsam_0000{i}_0000.nii.gz" for i in (1, 2, 3)]
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["numTraining"] == 3 and dataset["labels"] == {"background": 0, "object_2": 2}
    assert dataset["file_ending"] == ".nii.gz" and dataset["channel_names"] == {"0": "image"}
    prompts = read_prompts(tmp_path)
    assert [p["case"] for p in prompts] == ["imedsam_00001", "imedsam_00002", "imedsam_00003"]
    assert prompts[0]["source"] == "phantom.nii.gz" and prompts[0]["slice_index"] == 3 and prompts[0]["label"] == 2


def test_dataset_round_trip_from_export(tmp_path):
    slices = phantom_slices(3)
    export_slices(tmp_path, slices)
    samples = load_export(tmp_path)
    assert len(samples) == 3
    for sample, item in zip(samples, slices):
        np.testing.assert_allclose(sample.image, item.image, rtol=1e-6)
        np.testing.assert_array_equal(sample.mask, item.labels == 2)
        np.testing.assert_allclose(sample.box_xyxy, item.boxes[2])


def test_export_killed_mid_write_leaves_a_readable_dataset(tmp_path):
    export_slices(tmp_path, phantom_slices(2))
    script = textwrap.dedent(f"""
        import os, numpy as np
        import napari_imedsam.io.export as export
        from napari_imedsam.io.export import ExportSlice, export_slices
        real = export.write_array
        calls = []
        def dying(path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 2:  # after the image file, before the label file
                os._exit(9)
            return real(path, *args, **kwargs)
        export.write_array = dying
        mask = np.zeros((32, 32), np.int32); mask[8:20, 8:20] = 1
        export_slices({str(tmp_path)!r}, [ExportSlice(np.ones((32, 32), np.float32), mask, {{1: [8, 8, 19, 19]}})])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    with pytest.warns(UserWarning, match=r"no label file \(imedsam_00003\)"):  # the dead case's line is named
        samples = load_dataset(tmp_path)  # the earlier export is intact and readable
    assert len(samples) == 2
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 2
    assert export_slices(tmp_path, phantom_slices(1)) == ["imedsam_00004"]  # appending still works, no id reused
    assert [p.name for p in (tmp_path / "incomplete").iterdir()] == ["imedsam_00003_0000.nii.gz"]  # set aside
    with pytest.warns(UserWarning, match="imedsam_00003"):
        assert len(load_dataset(tmp_path)) == 3


def test_ctrl_c_stops_training_after_the_step_and_saves_the_best_so_far(tmp_path):
    """The first Ctrl-C (SIGINT) of `imedsam train` stops it cleanly, as the dock's Cancel does: one line,
    exit 0, a saved version; no traceback."""
    import signal

    export_slices(tmp_path / "data", phantom_slices(4))
    command = [sys.executable, "-m", "napari_imedsam.cli", "train", "--model", "tiny", "--data", str(tmp_path / "data"),
               "--mode", "decoder", "--epochs", "500", "--batch-size", "2", "--points", "64", "--out",
               str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in process.stdout:  # wait until it trains
        lines.append(line)
        if "epoch   1" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "interrupted: stopping after this step" in err and "Traceback" not in err
    assert "(interrupted)" in out and (tmp_path / "out" / "adapters" / "default" / "v001.safetensors").exists()


def test_metrics_on_known_masks():
    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.zeros_like(a)
    b[5:15, 7:17] = True
    assert dice(a, b) == pytest.approx(2 * 80 / 200)
    assert iou(a, b) == pytest.approx(80 / 120)
    assert hd95(a, a) == 0.0 and hd95(a, b) == pytest.approx(2.0)
    assert hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.0)
    assert hd95(a, np.zeros_like(a)) == float("inf")


def test_versions_are_never_overwritten(tmp_path):
    folder = tmp_path / "adapters" / "liver"
    assert next_version_path(folder).name == "v001.safetensors"
    (folder / "v001.safetensors").write_bytes(b"x")
    (folder / "v007.safetensors").write_bytes(b"x")
    assert next_version_path(folder).name == "v008.safetensors"


def test_a_reservation_that_names_no_owner_is_stale_after_a_minute(tmp_path, monkeypatch):
    """A process killed (or a disk full) between creating `.vNNN.reserved` and writing its owner left an
    empty marker that no run ever cleaned: every later run skipped that number. Now a fresh empty marker
    is respected (its writer may be about to fill it in) and one older than a minute is cleaned; and a
    failed owner write removes its marker at once."""
    import os
    import time

    import src_train.output as output

    folder = tmp_path / "adapters" / "liver"
    folder.mkdir(parents=True)
    marker = folder / ".v001.reserved"
    marker.touch()
    assert next_version_path(folder).name == "v002.safetensors"  # fresh: its writer may be filling it in
    (folder / ".v002.reserved").unlink()
    old = time.time() - output.OWNERLESS_MARKER_S - 5
    os.utime(marker, (old, old))
    assert next_version_path(folder).name == "v001.safetensors" and marker.read_text()  # cleaned, ours now
    marker.unlink()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output, "_owner", full)
    with pytest.raises(OSError):
        next_version_path(folder)
    assert not list(folder.iterdir())


def test_decoder_mode_training_improves_and_saves_versions(tmp_path):
    torch.manual_seed(0)
    export_slices(tmp_path / "data", phantom_slices(10))
    samples = load_dataset(tmp_path / "data")
    train_set, val_set = split(samples, 0.2, seed=0)
    assert len(val_set) == 2 and not {s.name for s in train_set} & {s.name for s in val_set}
    loaded = untrained()
    report = train(loaded, samples, TrainOptions(mode="decoder", epochs=60, seed=0), tmp_path / "out", name="demo")
    assert report.after["dice"] > report.before["dice"] + 0.2
    assert report.history[-1].loss < report.history[0].loss
    tensors, header = read_safetensors(report.version_path)
    assert report.version_path.name == "v001.safetensors"
    assert header["mode"] == "decoder" and header["base_model"] == "tiny"
    assert header["metrics"]["dice"] == pytest.approx(report.after["dice"])
    assert len(header["data_manifest_sha256"]) == 64
    # the saved version reproduces the trained model; a second run makes v002
    reloaded = untrained("tiny", adapters=report.version_path)
    assert reloaded.adapter_version == str(report.version_path)
    for key, value in tensors.items():
        assert torch.equal(reloaded.network.state_dict()[key], value)
    again = train(untrained(), samples, TrainOptions(mode="decoder", epochs=1), tmp_path / "out", name="demo")
    assert again.version_path.name == "v002.safetensors" and report.version_path.exists()


def test_adapters_mode_trains_lora_and_frequency_adapters(tmp_path):
    export_slices(tmp_path / "data", phantom_slices(4))
    samples = load_dataset(tmp_path / "data")
    loaded = untrained()
    lora_before = {n: p.clone() for n, p in loaded.network.parameter_groups()["lora"]}
    report = train(loaded, samples, TrainOptions(mode="adapters", epochs=2, batch_size=2, n_points=256),
                   tmp_path / "out")
    changed = [n for n, p in report.model.network.parameter_groups()["lora"] if not torch.equal(p, lora_before[n])]
    assert changed  # LoRA B moved away from zero
    assert all(torch.equal(p, lora_before[n]) for n, p in loaded.network.parameter_groups()["lora"])  # untouched
    tensors, header = read_safetensors(report.version_path)
    assert header["mode"] == "adapters" and any("lora_" in k for k in tensors)


def test_train_and_evaluate_cli(tmp_path, capsys):
    images, masks = phantom_folders(tmp_path, 6, seed=4)
    code = main(["train", "--model", "tiny", "--data", str(tmp_path), "--mode", "decoder", "--epochs", "3",
                 "--out", str(tmp_path / "out"), "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "held-back sample(s): before" in out and "v001.safetensors" in out
    adapters = tmp_path / "out" / "adapters" / "default" / "v001.safetensors"
    assert main(["evaluate", "--model", "tiny", "--adapters", str(adapters), "--images", str(images),
                 "--masks", str(masks), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 7 and {"name", "dice", "hd95"} <= set(rows[0]) and rows[-1]["n"] == 6
    assert main(["evaluate", "--model", "tiny", "--adapters", str(adapters), "--images", str(images),
                 "--masks", str(masks), "--json", "--uncertainty", "epistemic"]) == 0
    epistemic = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert epistemic[-1]["uncertainty_auroc"] != rows[-1]["uncertainty_auroc"]  # scored by another map
    assert main(["evaluate", "--model", "tiny", "--images", str(images), "--masks", str(images)]) == 2
    assert "the masks folder is the images folder" in capsys.readouterr().err
    assert main(["train", "--model", "tiny", "--data", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "expected an I-MedSAM export" in capsys.readouterr().err
    # --steps counts optimizer steps instead of epochs (it was once ignored outside the second-stage modes)
    assert main(["train", "--model", "tiny", "--data", str(tmp_path), "--mode", "decoder", "--steps", "2",
                 "--out", str(tmp_path / "steps")]) == 0
    out = capsys.readouterr().out
    assert "; 2 steps in" in out and ("saved" in out.splitlines()[-1]), out
    assert "  round   1" in out and "epoch" not in out  # validation rounds, not passes over the data
    assert main(["train", "--model", "tiny", "--data", str(tmp_path), "--mode", "decoder", "--steps", "0",
                 "--out", str(tmp_path / "steps")]) == 2
    assert "steps must be a whole number of at least 1, got 0" in capsys.readouterr().err


def _free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _torchrun_train(tmp_path, *options: str) -> tuple[subprocess.CompletedProcess, Path, str]:
    """`imedsam train` in adapters mode under torchrun, two CPU processes: (result, out folder, output)."""
    export_slices(tmp_path / "data", phantom_slices(6))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):  # a failed launch (rendezvous on a busy machine) is retried once; results never are
        out = tmp_path / f"out{attempt}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", _free_port(), "-m", "napari_imedsam.cli", "train", "--model", "tiny",
                   "--data", str(tmp_path / "data"), "--mode", "adapters", "--batch-size", "2",
                   "--points", "256", "--out", str(out), "--device", "cpu", *options]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        if result.returncode == 0:
            break
    output = f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    # the two ranks share stdout: their lines can interleave, so each digest is found by pattern
    digests = dict(re.findall(r"rank (\d+) final weights sha256 ([0-9a-f]{64})", result.stdout))
    assert set(digests) == {"0", "1"}, output
    assert digests["0"] == digests["1"], output  # DDP kept the ranks in lock-step
    return result, out, output


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    _, out, _ = _torchrun_train(tmp_path, "--epochs", "2")
    assert [p.name for p in (out / "adapters" / "default").iterdir()] == ["v001.safetensors"]


def test_ddp_ranks_stop_at_the_same_step_on_the_time_limit(tmp_path):
    """`--max-seconds` is checked before every step on a clock reading the ranks share, so both stop at
    the same step (a rank that stopped alone would leave the other waiting in a collective)."""
    import re

    result, _, output = _torchrun_train(tmp_path, "--epochs", "1000", "--max-seconds", "2")
    steps = [int(n) for n in re.findall(r"(\d+) steps in", result.stdout)]
    assert len(steps) == 2 and steps[0] == steps[1] and 0 < steps[0] < 1000, output  # 1000 epochs: >= 1000 steps


def test_training_is_deterministic_with_a_seed(tmp_path):
    export_slices(tmp_path / "data", phantom_slices(4))
    samples = load_dataset(tmp_path / "data")
    weights = []
    for run in range(2):
        torch.manual_seed(0)  # the same starting weights
        loaded = untrained()
        torch.manual_seed(123 + run)  # a different global state must not matter: train() seeds itself
        report = train(loaded, samples, TrainOptions(mode="decoder", epochs=2, seed=5), tmp_path / f"out{run}")
        weights.append(report.model.network.state_dict())
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_zoom_training_records_inference_mode_in_the_header(tmp_path):
    export_slices(tmp_path / "data", phantom_slices(6))
    samples = load_dataset(tmp_path / "data")
    report = train(untrained(), samples, TrainOptions(mode="decoder", epochs=20, zoom=True), tmp_path / "out")
    _, header = read_safetensors(report.version_path)
    assert header["inference"] == {"zoom": True, "zoom_margin": 0.25, "prompt_clicks": False}
    assert report.after["dice"] > report.before["dice"]
    reloaded = untrained("tiny", adapters=report.version_path)
    assert reloaded.zoom and Predictor(reloaded).zoom  # used with zoom by default, as trained


def test_fine_mode_trains_only_the_fine_inr_and_the_recipe_packages_both_stages(tmp_path):
    from napari_imedsam.model.registry import load_model
    from napari_imedsam.model.weights import save_model
    from src_train.demo_recipe import package

    export_slices(tmp_path / "data", phantom_slices(4))
    samples = load_dataset(tmp_path / "data")
    loaded = untrained()
    first_stage = save_model(loaded.network, tmp_path / "stage1.safetensors", {"mode": "full", "metrics": {}})
    loaded = load_model(first_stage)
    before = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    options = TrainOptions(mode="fine", epochs=2, batch_size=2, n_points=256, keep_start=False)
    report = train(loaded, samples, options, tmp_path / "out")
    after = report.model.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(torch.equal(v, loaded.network.state_dict()[k]) for k, v in before.items())  # a new model
    assert changed and all(k.startswith("fine_inr.") for k in changed)

    counts = {"train": 4, "train_manifest_sha256": "ab" * 32}
    shipped = package(first_stage, report.version_path, tmp_path / "demo.safetensors", counts, "recipe cmd")
    tensors, header = read_safetensors(shipped)
    assert all(v.dtype == torch.float16 for k, v in tensors.items() if v.is_floating_point())
    assert header["recipe"] == "recipe cmd" and header["fine_stage"]["options"]["mode"] == "fine"
    assert header["training_files_sha256"] == "ab" * 32 and "research and education only" in header["data"]
    reloaded = load_model(shipped).network.state_dict()
    for key in changed:  # the second stage's fine INR is in the shipped file (to float16 precision)
        assert torch.allclose(reloaded[key], after[key].half().float())


def test_fine_tuning_inherits_how_the_model_is_used_and_never_returns_worse(tmp_path):
    """The bundled demo model runs with zoom: training must measure and save it that way, and a run
    that cannot beat the starting weights on the held-back samples keeps them, and saves no new version
    (it would be a copy of the weights it started from)."""
    from napari_imedsam.evaluation import evaluate
    from napari_imedsam.model.registry import load_model

    export_slices(tmp_path / "data", phantom_slices(6))
    samples = load_dataset(tmp_path / "data")
    base = load_model("demo")
    assert base.zoom
    _, val_set = split(samples, 0.34, 0)
    expected_before = evaluate(Predictor(load_model("demo")), val_set)["dice"]
    options = TrainOptions(mode="decoder", steps=6, validate_every=3, lr_decoder=5.0, val_fraction=0.34)  # wrecks
    report = train(base, samples, options, tmp_path / "out")
    assert report.before["dice"] == pytest.approx(expected_before)  # measured the way the user runs it
    assert report.n_val == len(val_set) and report.steps == 6
    assert report.kept_base and report.after["dice"] == pytest.approx(report.before["dice"])
    assert report.version_path is None and not report.saved and not list((tmp_path / "out").rglob("v*"))
    assert not (tmp_path / "out").exists()  # the folders made to check the result could be written are gone
    assert report.model.adapter_version == base.adapter_version and report.model.network is not base.network
    start = base.network.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in report.model.network.state_dict().items())
    assert "rough check" in report.summary  # fewer than 3 held back
    best = max(record.val_dice for record in report.history)  # what training reached is said, not only "before"
    assert best < report.before["dice"] and f"trained weights reached {best:.3f} at best" in report.summary
    options = TrainOptions(mode="decoder", steps=1, val_fraction=0.34, keep_start=False)  # a result to save
    report = train(base, samples, options, tmp_path / "out")
    _, header = read_safetensors(report.version_path)
    assert report.version_path.name == "v001.safetensors" and header["inference"]["zoom"] is True
    reloaded = load_model("demo", adapters=report.version_path)
    assert reloaded.zoom


def test_next_click_is_inside_the_largest_error_region():
    from napari_imedsam.evaluation import next_click

    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    prediction = truth.copy()
    prediction[5:25, 5:12] = False  # a missed strip of 140 px
    prediction[30:35, 30:35] = True  # a false alarm of 25 px
    row, col, positive = next_click(prediction, truth)
    assert positive and 5 <= row < 25 and 5 <= col < 12 and not prediction[row, col]
    prediction[5:25, 5:12] = True
    assert next_click(prediction, truth)[2] is False
    assert next_click(truth, truth) is None


def test_click_summary_counts_clicks_to_a_dice_and_keeps_never_at_the_maximum():
    from napari_imedsam.evaluation import click_summary

    curves = [[0.80, 0.86, 0.91, 0.95], [0.92, 0.92, 0.92, 0.92], [0.50, 0.60, 0.70, 0.80]]
    summary = click_summary(curves, max_clicks=3, reported=(0, 1, 3))
    assert summary["dice_at_clicks"] == {"0": round((0.80 + 0.92 + 0.50) / 3, 4), "1": round(2.38 / 3, 4),
                                         "3": round(2.67 / 3, 4)}
    assert summary["noc85"] == round((1 + 0 + 3) / 3, 3)  # the third never reaches 0.85: counted as 3
    assert summary["noc90"] == round((2 + 0 + 3) / 3, 3)


def test_click_training_batches_carry_clicks_on_the_object_and_off_it_and_train_the_point_embeddings():
    from src_train.fit import EncodedExample, make_batch, sample_clicks

    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:44] = True
    clicks = sample_clicks(mask, (10, 50, 10, 54), 40, rng)
    positive = clicks[:, 2] > 0
    assert positive.any() and (~positive).any()
    rows, cols = clicks[:, 1].astype(int), clicks[:, 0].astype(int)
    assert mask[rows[positive], cols[positive]].all()  # positive clicks on the object
    assert not mask[rows[~positive], cols[~positive]].any()  # negative clicks off it, inside the region
    assert ((rows >= 10) & (rows < 50) & (cols >= 10) & (cols < 54)).all()

    loaded = untrained()
    predictor = Predictor(loaded)
    example = EncodedExample(predictor.embed(np.random.default_rng(1).random((64, 64)).astype(np.float32)), mask)
    batch = make_batch([example, example], rng, 64, clicks=1.0)
    assert batch["click_coords"].shape[:2] == batch["click_labels"].shape and batch["click_coords"].shape[0] == 2
    network = loaded.network
    weight = network.prompt_encoder.point_embeddings[1].weight
    weight.requires_grad_(True)
    out = network.forward_train(batch["embedding"], batch["boxes"], batch["extent"], batch["points"],
                                clicks=(batch["click_coords"], batch["click_labels"]))
    out.coarse_logit.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert "click_coords" not in make_batch([example], rng, 64, clicks=0.0)
    # error-driven: each click lies where the model's own mask is wrong: on the object if positive
    errors = make_batch([example, example], np.random.default_rng(3), 64, clicks=1.0, network=network)
    geometry = example.embedding.geometry
    scale = geometry.box_to_input(np.array([0.0, 0.0, 1.0, 1.0]))
    for (x, y), sign in zip(errors["click_coords"].reshape(-1, 2).numpy(), errors["click_labels"].flatten()):
        col, row = (x - scale[0]) / (scale[2] - scale[0]), (y - scale[1]) / (scale[3] - scale[1])
        assert mask[int(round(row)), int(round(col))] == bool(sign)
    with pytest.raises(Exception, match="clicks must be a fraction"):
        from src_train.trainer import check_options

        check_options(TrainOptions(clicks=1.5))
