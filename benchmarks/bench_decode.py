"""Box -> refined-mask latency, side by side on one embedding, and encoder cost of the adapters.

Measured in one run on the same embedding and box:
  (a) ROI coarse-to-fine decode (what the widget runs on every box change),
  (b) dense full-resolution INR decode (every output pixel through Dec_c),
  (c) segment-anything's own mask decoder (prompt encoder + two-way transformer + hypernetwork);
and the image encoder with LoRA + frequency adapters vs segment-anything's bare ImageEncoderViT.

The decoder is first fitted briefly on synthetic ellipses (decoder mode), so the coarse result
is decided away from the boundary as with real weights; an untrained decoder is undecided
everywhere, the ROI path's worst case (`--fit-steps 0` measures that).

    python benchmarks/bench_decode.py [--model vit_b] [--image-size 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from functools import partial

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT

from napari_imedsam.evaluation import dice
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.io.phantoms import ellipse_phantom, ellipse_phantoms
from napari_imedsam.model.registry import load_model
from src_train.fit import EncodedExample, fit_decoder
from src_train.points import box_of_mask


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bare_encoder_like(network) -> ImageEncoderViT:
    """segment-anything's own encoder with the same frozen weights (no LoRA, no FA)."""
    enc = network.config.encoder
    bare = ImageEncoderViT(
        img_size=enc.img_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth,
        num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, out_chans=enc.out_chans, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
        window_size=enc.window_size, global_attn_indexes=enc.global_attn_indexes,
    )
    bare.load_state_dict(network.image_encoder.state_dict(), strict=False)
    return bare.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", help="config name or checkpoint (default: vit_b)")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=512, help="slice and output size (default 512)")
    parser.add_argument("--fit-steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(args.model, input_size=args.input_size, device="cpu")
    network = loaded.network
    predictor = Predictor(loaded)

    if args.fit_steps:
        train = ellipse_phantoms(4, size=args.image_size, seed=1)
        encoded = [EncodedExample(predictor.embed(image), mask) for image, mask in train]
        fit_decoder(network, encoded, steps=args.fit_steps, seed=0)
    image, mask = ellipse_phantom(args.image_size, np.random.default_rng(123))
    box = box_of_mask(mask)

    pixels = torch.rand(1, 3, network.config.encoder.img_size, network.config.encoder.img_size) * 255
    with torch.inference_mode():
        t_enc_adapted, _ = timed(lambda: network.encode(pixels), max(1, args.repeats // 2))
        bare = bare_encoder_like(network)
        normalised = (pixels - network.pixel_mean) / network.pixel_std
        t_enc_bare, _ = timed(lambda: bare(normalised), max(1, args.repeats // 2))

    embedding = predictor.embed(image)
    t_roi, roi = timed(lambda: predictor.predict_embedding(embedding, box), args.repeats)
    t_dense, dense = timed(lambda: predictor.predict_embedding(embedding, box, dense=True), max(1, args.repeats // 3))
    t_sam, _ = timed(lambda: predictor.sam_probability(embedding, box), args.repeats)

    agreement = float((roi.refined_mask == dense.refined_mask).mean())
    r0, r1, c0, c1 = roi.roi
    agreement_roi = float((roi.refined_mask == dense.refined_mask)[r0:r1, c0:c1].mean())
    row = {
        "model": args.model, "config": network.config.name, "input_size": network.config.encoder.img_size,
        "image_size": args.image_size, "threads": torch.get_num_threads(), "fit_steps": args.fit_steps,
        "roi_decode_s": t_roi, "dense_decode_s": t_dense, "sam_decoder_s": t_sam,
        "dense_over_roi": t_dense / t_roi, "roi_over_sam": t_roi / t_sam,
        "encoder_adapted_s": t_enc_adapted, "encoder_bare_s": t_enc_bare,
        "encoder_adapted_over_bare": t_enc_adapted / t_enc_bare,
        "roi_dense_pixel_agreement": agreement, "roi_dense_agreement_in_region": agreement_roi,
        "roi_vs_truth_dice": dice(roi.refined_mask, mask), "dense_vs_truth_dice": dice(dense.refined_mask, mask),
        "roi_exact_points": roi.n_coarse_exact, "dense_exact_points": dense.n_coarse_exact,
        "refined_points": roi.n_refined,
    }
    print(f"I-MedSAM decode benchmark: {args.model} (input {row['input_size']} px), "
          f"{args.image_size}x{args.image_size} slice, box {box.astype(int).tolist()}, "
          f"{row['threads']} threads, decoder fitted {args.fit_steps} steps")
    print(f"  box -> refined mask, ROI coarse-to-fine : {t_roi * 1e3:9.1f} ms  (Dec_c exact at "
          f"{roi.n_coarse_exact} pts, Dec_f at {roi.n_refined})")
    print(f"  box -> refined mask, dense INR decode   : {t_dense * 1e3:9.1f} ms  (Dec_c at {dense.n_coarse_exact} pts)")
    print(f"  segment-anything's own mask decoder     : {t_sam * 1e3:9.1f} ms")
    print(f"  ratios: dense / ROI = {row['dense_over_roi']:.1f}x faster;  "
          f"ROI / SAM decoder = {row['roi_over_sam']:.2f}x")
    print(f"  ROI vs dense mask: {agreement:.4%} pixel agreement ({agreement_roi:.4%} inside the decoded region); "
          f"Dice to truth ROI {row['roi_vs_truth_dice']:.4f} / dense {row['dense_vs_truth_dice']:.4f}")
    print(f"  encoder with LoRA + FA: {t_enc_adapted * 1e3:.0f} ms vs bare segment-anything encoder "
          f"{t_enc_bare * 1e3:.0f} ms -> {row['encoder_adapted_over_bare']:.2f}x")
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
