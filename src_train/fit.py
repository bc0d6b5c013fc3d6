"""Decoder-mode fitting on encoded examples: the CPU training core (frozen encoder, cached embeddings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from napari_imedsam.evaluation import next_click
from napari_imedsam.inference.predictor import Embedding
from napari_imedsam.inference.preprocess import grid_points, normalized_points, region_around_box
from napari_imedsam.model.imedsam import IMedSAM
from napari_imedsam.model.inr import image_patches

from .loop import Batch, Loop, parameter_groups
from .points import box_of_mask, jitter_box, sample_points


@dataclass
class EncodedExample:
    """One training slice after the encoder: its embedding, binary mask and box (default: tight)."""

    embedding: Embedding
    mask: np.ndarray
    box_xyxy: np.ndarray | None = None

    @property
    def box(self) -> np.ndarray:
        return box_of_mask(self.mask) if self.box_xyxy is None else np.asarray(self.box_xyxy, float)


def sample_clicks(mask: np.ndarray, region: tuple[int, int, int, int], count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """`count` simulated user clicks as (x, y, positive) rows: positive ones on the object (away from its
    border when it is thick enough), negative ones on the background of the box region, away from the
    object: where a loose box's mask spills over."""
    r0, r1, c0, c1 = region
    inside = ndimage.binary_erosion(mask, iterations=2)
    inside = inside if inside.any() else mask
    near = ndimage.binary_dilation(mask, iterations=3)
    background = np.zeros_like(mask)
    background[r0:r1, c0:c1] = ~near[r0:r1, c0:c1]
    rows = []
    for _ in range(count):
        positive = bool(rng.random() < 0.5) or not background.any()
        where = np.argwhere(inside if positive else background)
        row, col = where[rng.integers(len(where))]
        rows.append((float(col), float(row), 1.0 if positive else 0.0))
    return np.asarray(rows)


ERROR_GRID = 32  # the simulated user looks at the model's mask on this grid over the box region


@torch.no_grad()
def error_clicks(network: IMedSAM, batch: dict[str, torch.Tensor], examples: Sequence[EncodedExample],
                 boxes_px: Sequence[np.ndarray], count: int, encode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clicks per example where the network's own current mask is wrong, one after another (each
    with the earlier ones as prompts): the centre of the largest error region, positive in a miss,
    negative in a false alarm, as interactive-segmentation training does. Returns (coords (B, N, 2) in
    encoder pixels, labels (B, N))."""
    was_training = network.training
    network.eval()
    embedding = network.encode(batch["embedding"]) if encode else batch["embedding"]
    grids = []
    for example, box in zip(examples, boxes_px):
        height, width = example.mask.shape
        r0, r1, c0, c1 = region_around_box(box, (height, width))
        rows, cols = np.linspace(r0, r1 - 1, ERROR_GRID), np.linspace(c0, c1 - 1, ERROR_GRID)
        truth = example.mask[np.round(rows).astype(int)][:, np.round(cols).astype(int)].astype(bool)
        grids.append((rows, cols, grid_points(rows, cols, (height, width)), truth))
    points = torch.stack([g[2] for g in grids]).to(embedding.device)
    coords, labels = [], []
    for _ in range(count):
        prompt_clicks = (torch.stack(coords, 1), torch.stack(labels, 1)) if coords else None
        prompt = network.prompt(embedding, batch["boxes"], batch["extent"], points=prompt_clicks)
        logits = network.coarse(prompt, network.point_input(prompt, points)).logit
        step_coords, step_labels = [], []
        for index, (example, (rows, cols, _, truth)) in enumerate(zip(examples, grids)):
            predicted = (logits[index] > 0).view(ERROR_GRID, ERROR_GRID).cpu().numpy()
            click = next_click(predicted, truth)
            if click is None:  # already right: a positive click on the object keeps it so
                inside = np.argwhere(truth) if truth.any() else np.array([[ERROR_GRID // 2, ERROR_GRID // 2]])
                click = (*inside[len(inside) // 2], True)
            i, j, positive = click
            x, y = cols[j], rows[i]
            xy = example.embedding.geometry.points_to_input([x, y])[0]
            step_coords.append(torch.as_tensor(xy, dtype=torch.float32))
            step_labels.append(torch.tensor(1 if positive else 0))
        coords.append(torch.stack(step_coords).to(embedding.device))
        labels.append(torch.stack(step_labels).to(embedding.device))
    network.train(was_training)
    return torch.stack(coords, 1), torch.stack(labels, 1)


def make_batch(examples: Sequence[EncodedExample], rng: np.random.Generator, n_points: int,
               boundary_fraction: float = 0.5, box_jitter: float = 0.05, device: torch.device | None = None,
               patch_size: int = 0, clicks: float = 0.0, network: IMedSAM | None = None,
               encode: bool = False) -> dict[str, torch.Tensor]:
    """Embeddings, jittered boxes (encoder pixels), extents, query points and labels for a batch; with
    `patch_size` also each point's image patch (`patches`), from the examples' kept images. With
    probability `clicks` the batch also carries 1-3 simulated clicks per example (`click_coords` in
    encoder pixels, `click_labels` 1/0) and looser boxes, so the clicks carry what the box does not:
    where `network`'s own mask is wrong when it is given (`encode`: the batch holds pixels), else at
    random on the object and on the background."""
    n_clicks = int(rng.integers(1, 4)) if clicks and rng.random() < clicks else 0
    embeddings, boxes, extents, points, labels, patches, coords, signs, boxes_px = [], [], [], [], [], [], [], [], []
    for example in examples:
        geometry = example.embedding.geometry
        shape = example.mask.shape
        jitter = box_jitter + (0.1 if n_clicks else 0.0)
        box = jitter_box(example.box, shape, rng, jitter) if jitter else example.box
        region = region_around_box(box, shape)
        boxes_px.append(box)
        if n_clicks and network is None:
            chosen = sample_clicks(example.mask.astype(bool), region, n_clicks, rng)
            coords.append(torch.as_tensor(geometry.points_to_input(chosen[:, :2]), dtype=torch.float32))
            signs.append(torch.as_tensor(chosen[:, 2], dtype=torch.int64))
        rc, target = sample_points(example.mask, region, n_points, boundary_fraction, rng)
        embeddings.append(example.embedding.tensor)
        boxes.append(torch.as_tensor(geometry.box_to_input(box), dtype=torch.float32))
        extents.append(torch.tensor(geometry.extent, dtype=torch.float32))
        points.append(normalized_points(rc[:, 0], rc[:, 1], shape))
        labels.append(torch.from_numpy(target))
        if patch_size:
            if example.embedding.image is None:
                raise ValueError("this model's fine INR reads the image, but a training example kept none")
            patches.append(image_patches(example.embedding.image, points[-1].unsqueeze(0), patch_size)[0])
    batch = {"embedding": torch.cat(embeddings).float(), "boxes": torch.stack(boxes),
             "extent": torch.stack(extents), "points": torch.stack(points), "labels": torch.stack(labels)}
    if patch_size:
        batch["patches"] = torch.stack(patches)
    if n_clicks and network is None:
        batch["click_coords"], batch["click_labels"] = torch.stack(coords), torch.stack(signs)
    elif n_clicks:
        moved = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
        batch["click_coords"], batch["click_labels"] = (
            t.cpu() for t in error_clicks(network, moved, examples, boxes_px, n_clicks, encode))
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def batches(pick: Callable[[np.ndarray], list[EncodedExample]], count: int, rng: np.random.Generator,
            batch_size: int, n_points: int, **options) -> Callable[[], Batch]:
    """A batch source for `Loop`: each call draws `batch_size` indices in range(count), `pick` turns them
    into examples, `make_batch(examples, rng, n_points, **options)` into a batch."""
    def next_batch() -> Batch:
        return make_batch(pick(rng.integers(0, count, batch_size)), rng, n_points, **options)

    return next_batch


def fit_decoder(network: IMedSAM, examples: Sequence[EncodedExample], steps: int, *, batch_size: int = 4,
                n_points: int = 1024, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train prompt encoder, upscaling and both INRs for `steps` steps (constant learning rate); returns
    the loss per step. The network is left in eval mode with every parameter frozen."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    next_batch = batches(lambda chosen: [examples[i] for i in chosen], len(examples), rng, batch_size, n_points,
                         patch_size=network.config.decoder.fine_image_patch)
    loop = Loop(network, parameter_groups(network, "decoder", lr_decoder=lr), steps, next_batch)
    losses, _ = loop.run(steps)
    loop.finish()
    return losses
