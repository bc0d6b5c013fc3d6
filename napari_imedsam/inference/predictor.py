"""Predictor: numpy in, numpy out. Embedding cache, box prompt, coarse-to-fine decode of the box region."""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from ..model.imedsam import BoxPrompt, IMedSAM
from ..model.inr import CoarseOutput, refine_count
from ..model.registry import LoadedModel
from .boxes import box_with_clicks, validate_clicks
from .click_refine import refine_after_click
from .clicks import correct_with_clicks
from .crops import CropMemory
from .embedding_store import Embedding, EmbeddingStore
from .mirror import mirrored
from .preprocess import (
    UNIT,
    Geometry,
    InputError,
    IntensityWindow,
    as_2d_image,
    box_has_contrast,
    grid_points,
    normalize_intensity,
    normalized_points,
    region_around_box,
    scale_box,
    to_model_input,
    validate_box,
    zoom_region,
)
from .windows import IntensityRange, intensity_range

POINT_CHUNK = 32768  # points per INR batch: bounds memory (hidden0 x chunk floats)
# |logit| above this (p < 0.12 or > 0.88) on the coarse grid, with no sign change next to it, is
# decided: bilinear interpolation cannot cross 0.5 there. UGS-selected points outside the band are
# evaluated exactly anyway, so uncertainty need not widen the band.
CONFIDENT_LOGIT = 2.0


@dataclass
class Prediction:
    """One box's result at the output size (H_out, W_out); zeros outside the decoded region."""

    coarse_prob: np.ndarray
    uncertainty: np.ndarray
    refined_prob: np.ndarray
    box_xyxy: np.ndarray  # in output pixels
    roi: tuple[int, int, int, int]  # (row0, row1, col0, col1) decoded region, output pixels
    n_coarse_exact: int  # points where Dec_c ran at full resolution
    n_refined: int  # points Dec_f refined
    intensity: IntensityRange | None = None  # the slice's window as resolved for this prediction, when it was

    @property
    def refined_mask(self) -> np.ndarray:
        return self.refined_prob > 0.5

    @property
    def mean_uncertainty_in_box(self) -> float:
        x0, y0, x1, y1 = self.box_xyxy
        r0, r1 = max(0, int(math.floor(y0))), int(math.ceil(y1)) + 1
        c0, c1 = max(0, int(math.floor(x0))), int(math.ceil(x1)) + 1
        region = self.uncertainty[r0:r1, c0:c1]
        return float(region.mean()) if region.size else 0.0


def click_prompts(points: np.ndarray | None, geometry: Geometry, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(N, 3) clicks (x, y, positive) in image pixels -> SAM's (coords (1, N, 2) in encoder-input pixels,
    labels (1, N): 1 positive, 0 negative)."""
    points = validate_clicks(points)
    if points is None:
        return None
    xy = geometry.points_to_input(points[:, :2])
    coords = torch.as_tensor(xy, dtype=torch.float32, device=device)[None]
    labels = torch.as_tensor(points[:, 2] > 0, dtype=torch.int64, device=device)[None]
    return coords, labels


def content_digest(image: np.ndarray) -> str:
    """A fast fingerprint of a slice's pixels, shape and dtype (SHA-1: a cache key, not a signature;
    3-4x faster than BLAKE2 here thanks to the CPU's SHA instructions, 40 ms for a 4096^2 float slice)."""
    data = np.ascontiguousarray(image)
    digest = hashlib.sha1(data.view(np.uint8).reshape(-1), usedforsecurity=False)
    digest.update(repr((data.shape, data.dtype.str)).encode())
    return digest.hexdigest()


class Predictor:
    """Box -> coarse probability, uncertainty and refined mask, for 2D slices.

    One instance serves the widget, the CLI and the tests. `predict` encodes the slice (or
    reuses the cached embedding) and decodes the box region coarse-to-fine; `dense=True`
    decodes every output pixel instead (the slow reference the fast path must match).
    """

    def __init__(self, model: LoadedModel, cache: EmbeddingStore | None = None, margin: float = 0.1,
                 coarse_cells: int = 48, seed: int = 0, zoom: bool | None = None,
                 zoom_margin: float | None = None, crop_tolerance: float = 0.0,
                 prompt_clicks: bool | None = None, mirror: bool = False, click_refiner: bool = True) -> None:
        self.model = model
        # The click refiner shipped or loaded with the weights extends each click's correction
        # (`click_refine`); `click_refiner=False` leaves clicks to the walker alone.
        self.click_refiner = model.click_refiner if click_refiner else None
        self.mirror = mirror  # average each box over the slice and its three mirror images (see `mirror`)
        # Clicks go to the network's prompt encoder only for weights trained with click prompts
        # (header `inference.prompt_clicks`); a box-only model's reaction to them costs Dice.
        self.prompt_clicks = model.prompt_clicks if prompt_clicks is None else prompt_clicks
        self.cache = cache if cache is not None else EmbeddingStore()
        self.margin = margin
        self.coarse_cells = coarse_cells
        self.seed = seed
        # Zoom: encode the box plus a margin, resized to the encoder input, instead of the whole
        # slice (small structures get the encoder's full resolution; one embedding per box).
        self.zoom = model.zoom if zoom is None else zoom
        self.zoom_margin = model.zoom_margin if zoom_margin is None else zoom_margin
        # crop_tolerance > 0: a nudged box reuses an encoded crop that still fits it (see `crops`)
        self.crops = CropMemory(self.zoom_margin, crop_tolerance)
        self._ranges: dict[tuple, IntensityRange] = {}  # slice -> its resolved window, most recent last

    @property
    def network(self) -> IMedSAM:
        return self.model.network

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- embedding ------------------------------------------------------------------------
    def embedding_key(self, image: np.ndarray, window: IntensityWindow | None, slice_index: int | None) -> tuple:
        window = window or IntensityWindow()
        return (content_digest(image), slice_index, *self.model.cache_token, window.cache_token(),
                self.network.config.encoder.img_size)

    def embed(self, image: np.ndarray, window: IntensityWindow | None = None,
              slice_index: int | None = None) -> Embedding:
        """Encode a slice, or return its cached embedding."""
        image = as_2d_image(image)
        key = self.embedding_key(image, window, slice_index)
        cached = self.cache.get(key)
        if cached is not None:
            return self._on_device(cached)
        geometry = Geometry(image.shape[0], image.shape[1], self.network.config.encoder.img_size)
        normalized = normalize_intensity(image, window)
        pixels = to_model_input(normalized, geometry).to(self.device)
        with torch.inference_mode():
            tensor = self.network.encode(pixels)
        kept = None
        if self.network.config.decoder.fine_image_patch:
            kept = torch.from_numpy(normalized).permute(2, 0, 1).unsqueeze(0)
        return self._on_device(self.cache.put(Embedding(tensor, geometry, key, kept)))

    def _on_device(self, embedding: Embedding) -> Embedding:
        tensor = embedding.tensor.to(self.device)
        image = None if embedding.image is None else embedding.image.to(self.device)
        if tensor is embedding.tensor and image is embedding.image:
            return embedding
        return embedding.with_tensors(tensor, image)

    # ---- prediction -------------------------------------------------------------------------
    def predict(self, image: np.ndarray, box_xyxy, *, window: IntensityWindow | None = None,
                output_size: tuple[int, int] | None = None, slice_index: int | None = None,
                dense: bool = False, points: np.ndarray | None = None,
                mirror: bool | None = None) -> Prediction:
        """Segment the object in `box_xyxy` (x0, y0, x1, y1 in image pixels) of a 2D slice; `points`
        (N, 3) rows of (x, y, positive) are clicks: they correct the mask where they land (`clicks`),
        and are click prompts to the network too when it was trained with them (`prompt_clicks`); they
        never re-run the encoder. `mirror` (None: the predictor's setting) averages over the mirrors."""
        image = as_2d_image(image)
        points = validate_clicks(points)
        box = box_with_clicks(validate_box(box_xyxy, image.shape[:2]), points, image.shape[:2])
        if not box_has_contrast(image, box, window):
            warnings.warn(f"the image has no contrast in the box {np.round(box).astype(int).tolist()} (constant, "
                          "or no finite values, after the intensity window): the mask is meaningless", stacklevel=2)
        prompt_points = points if self.prompt_clicks else None
        token = (window or IntensityWindow()).cache_token()
        # The slice's window resolved once (hashed: 20-40 ms at 2048^2; percentiles: 0.2 s at 4096^2), for
        # the zoomed crops and the clicks; its mirror images have the same pixel values, so the same range.
        where = (content_digest(image), slice_index, token) if self.zoom or points is not None else None
        resolved = self._intensity_range(where, image, window) if where is not None else None

        def predict_box(image: np.ndarray, box: np.ndarray, prompt_points: np.ndarray | None,
                        where: tuple | None = None) -> Prediction:
            if not self.zoom:
                embedding = self.embed(image, window, slice_index)
                return self.predict_embedding(embedding, box, output_size=output_size, dense=dense,
                                              points=prompt_points)
            where = where or (content_digest(image), slice_index, token)
            return self._predict_zoomed(image, box, resolved, output_size, where, dense, prompt_points)

        if self.mirror if mirror is None else mirror:
            result = mirrored(predict_box, image, box, prompt_points)
        else:
            result = predict_box(image, box, prompt_points, where)
        if resolved is not None:
            result = replace(result, intensity=resolved)
        return self._apply_clicks(result, image, box, points, resolved)

    def _apply_clicks(self, result: Prediction, image: np.ndarray, box: np.ndarray, points: np.ndarray | None,
                      resolved: IntensityRange | None) -> Prediction:
        """The clicks' local, edge-aware correction of the refined probability (see `clicks`), extended by
        the click refiner when there is one; `points` as `validate_clicks` returns them; `resolved` the
        slice's window (set whenever there are clicks). Only the part of the slice they read is normalised."""
        if points is None:
            return result
        out_hw = result.refined_prob.shape
        if out_hw != image.shape[:2]:  # clicks, box and image onto the output grid (pixel centres to centres)
            from skimage.transform import resize

            image01 = resolved.apply(image)
            sy, sx = out_hw[0] / image01.shape[0], out_hw[1] / image01.shape[1]
            points = np.column_stack([(points[:, 0] + 0.5) * sx - 0.5, (points[:, 1] + 0.5) * sy - 0.5, points[:, 2]])
            box = np.asarray(box, dtype=np.float64) * [sx, sy, sx, sy]
            image01 = resize(image01, (*out_hw, image01.shape[2]), order=1, anti_aliasing=True)
            read = lambda w: image01[w[0]:w[1], w[2]:w[3]]  # noqa: E731
        else:  # the walker and the refiner read only their windows
            read = lambda w: resolved.apply(image[w[0]:w[1], w[2]:w[3]])  # noqa: E731
        refine = None
        if self.click_refiner is not None:
            def refine(walked: np.ndarray, clicks: np.ndarray) -> np.ndarray:
                return refine_after_click(self.click_refiner, walked, result.refined_prob, result.uncertainty,
                                          read, box, clicks)
        doubt = result.uncertainty if refine is None else None  # a refiner reads the uncertainty itself
        return replace(result, refined_prob=correct_with_clicks(result.refined_prob, read, points, refine=refine,
                                                                uncertainty=doubt))

    def _predict_zoomed(self, image: np.ndarray, box: np.ndarray, resolved: IntensityRange,
                        output_size: tuple[int, int] | None, where: tuple, dense: bool,
                        points: np.ndarray | None = None) -> Prediction:
        """Encode only the box region (normalised with the slice's `resolved` window), decode there, paste
        back. `where`: (content digest, slice index, window token), the image's key for its crops."""
        height, width = image.shape[:2]
        out_h, out_w = output_size or (height, width)
        slice_index = where[1]
        r0, r1, c0, c1 = self.crops.choose(where, box, (height, width)) if self.crops.tolerance > 0 else \
            zoom_region(box, (height, width), self.zoom_margin)
        crop = resolved.apply(image[r0:r1, c0:c1])
        sy, sx = out_h / height, out_w / width
        o_r0, o_c0 = int(round(r0 * sy)), int(round(c0 * sx))
        o_r1 = max(o_r0 + 1, min(out_h, int(round(r1 * sy))))
        o_c1 = max(o_c0 + 1, min(out_w, int(round(c1 * sx))))
        embedding = self.embed(crop, UNIT, slice_index)
        if points is not None:
            points = np.asarray(points, float) - np.array([c0, r0, 0.0])
        local = self.predict_embedding(embedding, box - np.array([c0, r0, c0, r0]), dense=dense,
                                       output_size=(o_r1 - o_r0, o_c1 - o_c0), points=points)
        maps = {}
        for name in ("coarse_prob", "uncertainty", "refined_prob"):
            full = np.zeros((out_h, out_w), np.float32)
            full[o_r0:o_r1, o_c0:o_c1] = getattr(local, name)
            maps[name] = full
        lr0, lr1, lc0, lc1 = local.roi
        return Prediction(box_xyxy=scale_box(box, (height, width), (out_h, out_w)),
                          roi=(lr0 + o_r0, lr1 + o_r0, lc0 + o_c0, lc1 + o_c0),
                          n_coarse_exact=local.n_coarse_exact, n_refined=local.n_refined, **maps)

    def _intensity_range(self, where: tuple, image: np.ndarray, window: IntensityWindow | None) -> IntensityRange:
        """The slice's intensity window resolved once (percentiles read every pixel: 0.2 s at 4096^2),
        then applied to each box's crop only."""
        resolved = self._ranges.pop(where, None) or intensity_range(image, window)
        self._ranges[where] = resolved
        while len(self._ranges) > 16:
            self._ranges.pop(next(iter(self._ranges)))
        return resolved

    def prompt(self, embedding: Embedding, box_xyxy: np.ndarray, points: np.ndarray | None = None) -> BoxPrompt:
        geometry = embedding.geometry
        box_input = torch.as_tensor(geometry.box_to_input(box_xyxy), dtype=torch.float32, device=self.device)
        extent = torch.tensor(geometry.extent, dtype=torch.float32, device=self.device)
        prompt = self.network.prompt(embedding.tensor, box_input.view(1, 4), extent,
                                     points=click_prompts(points, geometry, self.device))
        prompt.image = embedding.image
        return prompt

    def predict_embedding(self, embedding: Embedding, box_xyxy, *, output_size: tuple[int, int] | None = None,
                          dense: bool = False, points: np.ndarray | None = None) -> Prediction:
        geometry = embedding.geometry
        box = validate_box(box_xyxy, (geometry.height, geometry.width))
        out_h, out_w = output_size or (geometry.height, geometry.width)
        if out_h < 1 or out_w < 1:
            raise InputError(f"output size must be positive, got {(out_h, out_w)}")
        box_out = scale_box(box, (geometry.height, geometry.width), (out_h, out_w))
        roi = region_around_box(box_out, (out_h, out_w), self.margin)
        budget = refine_count((roi[1] - roi[0]) * (roi[3] - roi[2]), self.network.config.decoder.refine_fraction)
        with torch.inference_mode():
            prompt = self.prompt(embedding, box, points)
            if dense:
                maps = self._decode_dense(prompt, (out_h, out_w), budget)
            else:
                maps = self._decode_roi(prompt, roi, (out_h, out_w), budget)
        return Prediction(box_xyxy=box_out, roi=roi, **maps)

    def sam_probability(self, embedding: Embedding, box_xyxy, output_size: tuple[int, int] | None = None) -> np.ndarray:
        """segment-anything's own mask decoder output for the box (the comparison baseline)."""
        geometry = embedding.geometry
        out_hw = output_size or (geometry.height, geometry.width)
        with torch.inference_mode():
            logits = self.prompt(embedding, validate_box(box_xyxy, (geometry.height, geometry.width))).sam_mask_logits
            size = geometry.input_size
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            h, w = geometry.resized
            logits = F.interpolate(logits[..., :h, :w], size=out_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    # ---- decoding -------------------------------------------------------------------------------
    def _coarse_at(self, prompt: BoxPrompt, points: torch.Tensor, keep_features: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Dec_c + MC uncertainty at (N, 2) points, chunked. Returns logit, uncertainty, [input, z_c]."""
        logits, uncertainties, inputs, features = [], [], [], []
        for start in range(0, points.shape[0], POINT_CHUNK):
            chunk = points[start:start + POINT_CHUNK].to(self.device).unsqueeze(0)
            point_input = self.network.point_input(prompt, chunk)
            coarse: CoarseOutput = self.network.coarse(prompt, point_input)
            logits.append(coarse.logit[0])
            uncertainties.append(self.network.uncertainty(coarse, self.seed)[0])
            if keep_features:
                inputs.append(point_input[0])
                features.append(coarse.feature[0])
        cat = torch.cat
        empty = torch.empty(0, device=self.device)
        return (cat(logits) if logits else empty, cat(uncertainties) if uncertainties else empty,
                cat(inputs) if keep_features and inputs else None,
                cat(features) if keep_features and features else None)

    def _fine_at(self, point_input: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        out = [self.network.fine(point_input[s:s + POINT_CHUNK], features[s:s + POINT_CHUNK])
               for s in range(0, point_input.shape[0], POINT_CHUNK)]
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def _select(self, uncertainty: torch.Tensor, budget: int) -> torch.Tensor:
        """UGS: indices of the top-`budget` uncertain points whose variance clears the floor."""
        top = uncertainty.topk(min(budget, uncertainty.numel())).indices
        return top[uncertainty[top] > self.network.config.decoder.refine_min_uncertainty]

    def _decode_dense(self, prompt: BoxPrompt, out_hw: tuple[int, int], budget: int) -> dict:
        """Every output pixel through Dec_c; the top uncertain ones through Dec_f."""
        points = grid_points(np.arange(out_hw[0]), np.arange(out_hw[1]), out_hw)
        logit, uncertainty, _, _ = self._coarse_at(prompt, points, keep_features=False)
        selected = self._select(uncertainty, budget)
        refined = logit.clone()
        if selected.numel():
            _, _, sel_input, sel_feature = self._coarse_at(prompt, points[selected.cpu()], keep_features=True)
            refined[selected] = self._fine_at(sel_input, sel_feature)
        return self._maps(logit, uncertainty, refined, out_hw, n_exact=points.shape[0], n_refined=selected.numel())

    def _decode_roi(self, prompt: BoxPrompt, roi: tuple[int, int, int, int], out_hw: tuple[int, int],
                    budget: int) -> dict:
        """Coarse-to-fine in resolution: Dec_c on a coarse grid over the region, exactly only where
        the coarse result is undecided, then UGS + Dec_f on the uncertain points."""
        r0, r1, c0, c1 = roi
        h, w = r1 - r0, c1 - c0
        step = max(1.0, max(h, w) / self.coarse_cells)
        nh, nw = max(2, math.ceil((h - 1) / step) + 1), max(2, math.ceil((w - 1) / step) + 1)
        rows_c, cols_c = np.linspace(r0, r1 - 1, nh), np.linspace(c0, c1 - 1, nw)
        logit_c, unc_c, _, _ = self._coarse_at(prompt, grid_points(rows_c, cols_c, out_hw), keep_features=False)
        logit_c, unc_c = logit_c.view(1, 1, nh, nw), unc_c.view(1, 1, nh, nw)

        # Undecided coarse nodes: near 0.5, or on either side of a sign change. Every pixel between
        # two flagged nodes maps (nearest) to a flagged node, so a crossing is always evaluated.
        positive = logit_c > 0
        flag = logit_c.abs() < CONFIDENT_LOGIT
        flag[..., 1:, :] |= positive[..., 1:, :] != positive[..., :-1, :]
        flag[..., :-1, :] |= positive[..., 1:, :] != positive[..., :-1, :]
        flag[..., :, 1:] |= positive[..., :, 1:] != positive[..., :, :-1]
        flag[..., :, :-1] |= positive[..., :, 1:] != positive[..., :, :-1]
        band = F.interpolate(flag.float(), size=(h, w), mode="nearest")[0, 0].flatten() > 0

        logit = F.interpolate(logit_c, size=(h, w), mode="bilinear", align_corners=True).flatten()
        uncertainty = F.interpolate(unc_c, size=(h, w), mode="bilinear", align_corners=True).flatten()

        def points_at(flat: torch.Tensor) -> torch.Tensor:
            """Query points of region pixels by row-major index (never the whole region's grid)."""
            index = flat.cpu().numpy()
            return normalized_points(r0 + index // w, c0 + index % w, out_hw)

        exact = band.nonzero().flatten()
        e_logit, e_unc, e_input, e_feature = self._coarse_at(prompt, points_at(exact), keep_features=True)
        logit[exact], uncertainty[exact] = e_logit, e_unc

        # UGS among the band's points: outside it the coarse answer is decided (|logit| >= 2 at the
        # nodes around, no sign change), so the most uncertain points lie in it whenever the budget is
        # smaller than the band, and when it is larger (a big region: 12.5 % of its area) the budget
        # beyond the band would only send decided pixels to Dec_f.
        chosen = self._select(e_unc, budget)
        selected = exact[chosen]
        refined = logit.clone()
        if selected.numel():
            refined[selected] = self._fine_at(e_input[chosen], e_feature[chosen])

        # Outside the region every map is 0 (probabilities of a -inf logit, no uncertainty): only the
        # region's values go through the sigmoid and into the output arrays.
        maps = self._maps(logit, uncertainty, refined, (h, w), n_exact=int(exact.numel()) + nh * nw,
                          n_refined=int(selected.numel()))
        for name in ("coarse_prob", "uncertainty", "refined_prob"):
            full = np.zeros(out_hw, np.float32)
            full[r0:r1, c0:c1] = maps[name]
            maps[name] = full
        return maps

    @staticmethod
    def _maps(logit: torch.Tensor, uncertainty: torch.Tensor, refined: torch.Tensor, out_hw: tuple[int, int],
              n_exact: int, n_refined: int) -> dict:
        def as_np(t: torch.Tensor) -> np.ndarray:
            return t.view(out_hw).float().cpu().numpy()

        return {"coarse_prob": as_np(torch.sigmoid(logit)), "uncertainty": as_np(uncertainty),
                "refined_prob": as_np(torch.sigmoid(refined)), "n_coarse_exact": n_exact, "n_refined": n_refined}
