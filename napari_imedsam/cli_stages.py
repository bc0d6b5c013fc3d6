"""`imedsam train` modes that train a second stage on a frozen model: the Dual False Corrector
(`--mode corrector`) and the click refiner (`--mode clicks`)."""

from __future__ import annotations

import argparse
import sys

from .errors import InputError
from .interrupts import StopOnInterrupt


def _check_common(args: argparse.Namespace) -> None:
    from src_train.output import check_run_limits
    from src_train.trainer import check_name

    check_run_limits(args.steps, args.max_seconds, args.val_fraction)
    check_name(args.name)


def run_corrector(args: argparse.Namespace, loaded) -> int:
    """`train --mode corrector`: the Dual False Corrector on a frozen model (OUT/correctors/NAME/vNNN)."""
    from src_train.corrector import CorrectorOptions, train_corrector
    from src_train.data import load_dataset

    _check_common(args)
    options = CorrectorOptions(steps=args.steps or CorrectorOptions.steps, seed=args.seed,
                               val_fraction=args.val_fraction, max_seconds=args.max_seconds)
    samples = load_dataset(args.data)
    print(f"training a corrector for {loaded.model_id} on {len(samples)} samples from {args.data}")

    def progress(step: int, total: int) -> None:
        if step % options.validate_every == 0 or step == total:
            print(f"  step {step:5d} of {total}", flush=True)

    with StopOnInterrupt() as interrupted:
        report = train_corrector(loaded, samples, options, args.out, name=args.name, should_stop=interrupted,
                                 on_step=progress, command="imedsam " + " ".join(sys.argv[1:]))
    before, after = report.before.get("dice"), report.after.get("dice")
    if before is not None and after is not None:
        print(f"held-back Dice: refined {before:.4f} -> corrected {after:.4f}"
              + ("" if report.helps else " (no validation round beat the refined mask: saved for inspection, "
                 "flagged helps=false; the dock warns when it loads it)"))
    print(f"saved {report.path}")
    return 0


def run_clicks(args: argparse.Namespace, loaded) -> int:
    """`train --mode clicks`: the click refiner on a frozen model (OUT/click_refiners/NAME/vNNN)."""
    from src_train.click_refiner import ClickRefinerOptions, train_click_refiner
    from src_train.data import load_dataset

    _check_common(args)
    if args.rounds < 1:
        raise InputError(f"rounds must be a whole number of at least 1, got {args.rounds!r}")
    options = ClickRefinerOptions(steps=args.steps or ClickRefinerOptions.steps, rounds=args.rounds, seed=args.seed,
                                  val_fraction=args.val_fraction, max_seconds=args.max_seconds)
    samples = load_dataset(args.data)
    print(f"training a click refiner for {loaded.model_id} on {len(samples)} samples from {args.data}")

    def progress(step: int, total: int) -> None:
        if step % 100 == 0 or step == total:
            print(f"  step {step:5d} of {total}", flush=True)

    with StopOnInterrupt() as interrupted:
        report = train_click_refiner(loaded, samples, options, args.out, name=args.name, on_step=progress,
                                     should_stop=interrupted, command="imedsam " + " ".join(sys.argv[1:]),
                                     log=lambda message: print(message, flush=True))
    before, after = report.metrics_before, report.metrics
    if before and after:
        print("held-back Dice after 0 / 1 / 3 / 5 clicks: walker alone "
              + " / ".join(f"{before.get(f'dice_{n}', float('nan')):.4f}" for n in (0, 1, 3, 5))
              + "; with the refiner " + " / ".join(f"{after.get(f'dice_{n}', float('nan')):.4f}" for n in (0, 1, 3, 5))
              + ("" if report.helps else " (no validation beat the walker alone: saved for inspection, flagged "
                 "helps=false)"))
    print(f"saved {report.path}")
    return 0


SECOND_STAGES = {"corrector": run_corrector, "clicks": run_clicks}
