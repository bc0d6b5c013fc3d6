"""What adapters-mode training costs per image on this machine: one forward + backward through the
frozen LiteMedSAM TinyViT with its LoRA and frequency adapters trainable, next to the bundled `demo`
encoder (every weight trainable, as its recipe trains it), at their 256 px input, in one run.

    python benchmarks/bench_adapter_step.py [--batch 4] [--repeats 2] [--threads 2] [--images 1403] [--json]

`epoch_min`: minutes for one pass over `--images` images (the demo recipe's training set: 1,403).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch


def seconds_per_image(encoder: torch.nn.Module, trainable: list[torch.Tensor], batch: int, repeats: int) -> float:
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    images = torch.rand(batch, 3, 256, 256)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        encoder(images).float().pow(2).mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=1403)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from napari_imedsam.model.registry import load_model

    rows = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("litemedsam", "demo"):
            encoder = load_model(name, device="cpu").network.image_encoder
            adapters = [p for n, p in encoder.named_parameters() if "lora_" in n or "freq_adapters" in n]
            trainable = adapters if name == "litemedsam" else list(encoder.parameters())
            per_image = seconds_per_image(encoder, trainable, args.batch, args.repeats)
            rows[name] = {"trainable": sum(p.numel() for p in trainable), "s_per_image": round(per_image, 3),
                          "epoch_min": round(per_image * args.images / 60, 1)}
    rows["lite_over_demo"] = round(rows["litemedsam"]["s_per_image"] / rows["demo"]["s_per_image"], 1)
    if args.json:
        print(json.dumps({"threads": args.threads, "batch": args.batch, "images": args.images, **rows}))
    else:
        for name in ("litemedsam", "demo"):
            print(f"{name}: {rows[name]['s_per_image']} s per image forward+backward, one epoch of {args.images} "
                  f"images {rows[name]['epoch_min']} min ({rows[name]['trainable']:,} trainable)")


if __name__ == "__main__":
    main()
