"""Fine-tuning on real data: decoder mode on 20 corrected slices within a time budget, Dice before and
after on other images, and adapters-mode speed and peak memory (each mode in its own process).

    python benchmarks/bench_finetune.py --data ../shared/data/kvasir_dev [--model tiny] [--json]

Kvasir-SEG is research/education-only data: it is read from its folder, never copied into the package.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.model.registry import load_model
from src_train.data import load_folder
from src_train.trainer import TrainOptions, evaluate, train


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def subsets(data: Path, n_train: int, n_eval: int, seed: int):
    samples = load_folder(data / "images", data / "masks")
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in order[:n_train]], [samples[i] for i in order[n_train:n_train + n_eval]]


def load(model: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(model, device="cpu")


def phase_decoder(args) -> dict:
    train_set, eval_set = subsets(args.data, args.n_train, args.n_eval, args.seed)
    torch.manual_seed(args.seed)
    loaded = load(args.model)
    before = evaluate(Predictor(loaded), eval_set)
    start = time.perf_counter()
    # all 20 slices train; validation inside the trainer uses a held-back fifth of them
    report = train(loaded, train_set, TrainOptions(mode="decoder", epochs=10_000, max_seconds=args.budget,
                                                   seed=args.seed), args.out, name="bench_decoder")
    seconds = time.perf_counter() - start
    after = evaluate(Predictor(report.model), eval_set)
    return {"phase": "decoder", "model": args.model, "n_train": len(train_set), "n_eval": len(eval_set),
            "budget_s": args.budget, "train_s": seconds, "steps": report.steps, "steps_per_s": report.steps / seconds,
            "dice_before": before["dice"], "dice_after": after["dice"], "hd95_before": before["hd95"],
            "hd95_after": after["hd95"], "peak_rss_mb": peak_rss_mb()}


def phase_adapters(args) -> dict:
    train_set, _ = subsets(args.data, args.n_train, 0, args.seed)
    loaded = load(args.model)
    rss_before = peak_rss_mb()
    options = TrainOptions(mode="adapters", epochs=args.adapter_epochs, seed=args.seed, val_fraction=0.2)
    start = time.perf_counter()
    report = train(loaded, train_set, options, args.out, name="bench_adapters")
    seconds = time.perf_counter() - start
    return {"phase": "adapters", "model": args.model, "steps": report.steps, "train_s": seconds,
            "steps_per_s": report.steps / seconds, "batch_size": options.batch_size,
            "peak_rss_mb": peak_rss_mb(), "peak_rss_over_model_load_mb": peak_rss_mb() - rss_before,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/kvasir_dev")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--budget", type=float, default=120.0, help="decoder-mode time budget in seconds")
    parser.add_argument("--adapter-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_finetune"))
    parser.add_argument("--phase", choices=["decoder", "adapters"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.phase:  # child process: one phase, one JSON line
        print(json.dumps(phase_decoder(args) if args.phase == "decoder" else phase_adapters(args)))
        return
    rows = []
    for phase in ("decoder", "adapters"):  # separate processes: clean peak-memory readings
        command = [sys.executable, __file__, "--phase", phase, "--data", str(args.data), "--model", args.model,
                   "--n-train", str(args.n_train), "--n-eval", str(args.n_eval), "--budget", str(args.budget),
                   "--adapter-epochs", str(args.adapter_epochs), "--seed", str(args.seed), "--out", str(args.out)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    dec, ada = rows
    print(f"fine-tuning {args.model} on {dec['n_train']} slices of {args.data.name}, "
          f"Dice on {dec['n_eval']} other images:")
    print(f"  decoder mode, {dec['train_s']:.0f} s (budget {args.budget:.0f} s), {dec['steps']} steps "
          f"({dec['steps_per_s']:.1f}/s): Dice {dec['dice_before']:.4f} -> {dec['dice_after']:.4f}, "
          f"HD95 {dec['hd95_before']:.1f} -> {dec['hd95_after']:.1f} px; peak RSS {dec['peak_rss_mb']:.0f} MB")
    print(f"  adapters mode on {ada['device']}: {ada['steps_per_s']:.2f} steps/s (batch {ada['batch_size']}), "
          f"peak RSS {ada['peak_rss_mb']:.0f} MB ({ada['peak_rss_over_model_load_mb']:.0f} MB above model load); "
          f"decoder mode is {dec['steps_per_s'] / ada['steps_per_s']:.1f}x faster per step")
    if args.json:
        print(json.dumps({"decoder": dec, "adapters": ada}))


if __name__ == "__main__":
    main()
