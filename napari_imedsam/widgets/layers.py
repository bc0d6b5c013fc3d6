"""The plugin's napari layers for one image layer, and where the displayed slice is.

Layer order, bottom to top: the image, the uncertainty heatmap (transparent where the model is
sure), the coarse probability (hidden by default), the labels, the boxes (each with its object
number). So the mask stays visible with the heatmap on.

Each image has its own set: a plugin layer carries its role and its image's id in its metadata
(`LINK`), so a second image in the same viewer gets its own layers, named after it ("I-MedSAM labels
(CT pelvis)"; the first image's keep the plain names), and renaming a layer breaks nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import napari
import numpy as np
from napari.layers import Image, Labels, Layer, Shapes
from napari.utils.colormaps import Colormap, CyclicLabelColormap

from ..errors import InputError
from ..inference.boxes import box_from_corners_rc, box_to_corners_rc

BOXES, LABELS = "I-MedSAM boxes", "I-MedSAM labels"
COARSE, UNCERTAINTY = "I-MedSAM coarse probability", "I-MedSAM uncertainty"
UNCERTAINTY_LIMITS = (0.0, 0.25)  # predictive variance p(1 - p) peaks at 0.25 where p = 0.5
# Transparent below ~10 % of the range, then dark red -> orange -> yellow: a thin band on a clean edge.
UNCERTAINTY_COLORMAP = Colormap(
    colors=[[0, 0, 0, 0], [0, 0, 0, 0], [0.6, 0.0, 0.1, 0.55], [1.0, 0.5, 0.0, 0.8], [1.0, 1.0, 0.3, 0.95]],
    controls=[0.0, 0.1, 0.3, 0.6, 1.0], name="imedsam uncertainty",
)
BOX_TEXT = {"string": "{label}", "color": "yellow", "anchor": "upper_left", "size": 11}
# Object colours: bright, and none in the heatmap's red-orange-yellow or the suggestions' blue and lime
# (napari's default palette gives object 1 a dark brown that vanishes on the heatmap; object 3 was a
# dodger blue a user could not tell from suggested removals). Cycled.
OBJECT_COLORS = CyclicLabelColormap(colors=np.array([
    [0, 0, 0, 0], [0.0, 1.0, 1.0, 1], [1.0, 0.0, 1.0, 1], [1.0, 0.75, 0.8, 1], [1.0, 1.0, 1.0, 1],
    [0.6, 0.4, 1.0, 1], [0.5, 1.0, 0.83, 1], [1.0, 0.41, 0.71, 1], [0.53, 0.81, 0.98, 1], [0.25, 0.88, 0.82, 1],
]), name="imedsam objects")
LINK = "imedsam"  # metadata key of a plugin layer: {"role": ..., "image": the image's id}
IMAGE_ID = "imedsam_id"  # metadata key of an annotated image layer: its id


def image_id(image: Image) -> str:
    """The image layer's id for its plugin layers (kept in its metadata; made on first use)."""
    metadata = image.metadata
    if IMAGE_ID not in metadata:
        metadata[IMAGE_ID] = uuid.uuid4().hex
    return str(metadata[IMAGE_ID])


def is_plugin_layer(layer: Layer) -> bool:
    """A layer the plugin made (labels, boxes, maps, points, suggestions): never an image to annotate."""
    return isinstance(layer.metadata.get(LINK), dict)


def annotatable_images(viewer: napari.viewer.Viewer) -> list[Image]:
    """The image layers a user can annotate: every image layer but the plugin's maps."""
    return [layer for layer in viewer.layers if isinstance(layer, Image) and not is_plugin_layer(layer)]


def spatial_shape(layer: Image) -> tuple[int, ...]:
    return tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)


@dataclass
class LayerSet:
    """The I-MedSAM layers placed over one image layer (same scale and translate)."""

    viewer: napari.viewer.Viewer
    image: Image

    @property
    def shape(self) -> tuple[int, ...]:
        return spatial_shape(self.image)

    def check_dimensions(self) -> None:
        if len(self.shape) not in (2, 3):
            raise InputError(f"I-MedSAM segments 2D images (grey or RGB) and 3D volumes; layer "
                             f"'{self.image.name}' has shape {self.image.data.shape}: pick another layer")

    # ---- slice geometry: the one place the slicing axis is worked out ---------------------------
    @property
    def axis(self) -> int | None:
        """Data axis the displayed slice is taken along (None for 2D images)."""
        if len(self.shape) == 2:
            return None
        offset = self.viewer.dims.ndim - self.image.ndim
        hidden = [a - offset for a in self.viewer.dims.not_displayed if a - offset >= 0]
        return hidden[-1] if hidden else 0

    def current_slice(self) -> int | None:
        axis = self.axis
        if axis is None:
            return None
        point = self.image.world_to_data(self.viewer.dims.point)
        return int(np.clip(np.round(point[axis]), 0, self.image.data.shape[axis] - 1))

    def go_to_slice(self, z: int | None) -> None:
        axis = self.axis
        if axis is None or z is None:
            return
        point = np.zeros(self.image.ndim)
        point[axis] = z
        world = self.image.data_to_world(point)
        self.viewer.dims.set_point(axis + self.viewer.dims.ndim - self.image.ndim, world[axis])

    def box_of(self, vertices: np.ndarray) -> tuple[int | None, np.ndarray]:
        """A shape's vertices (data coordinates) -> (slice, box x0, y0, x1, y1): its bounding box."""
        vertices = np.asarray(vertices, float)
        axis = self.axis
        if axis is None:
            return None, box_from_corners_rc(vertices[:, -2:])
        in_plane = [a for a in range(vertices.shape[1]) if a != axis]
        return int(np.round(vertices[0, axis])), box_from_corners_rc(vertices[:, in_plane])

    def corners_of(self, slice_index: int | None, box_xyxy: np.ndarray) -> np.ndarray:
        """The 4 data-coordinate corners of a rectangle for a box on a slice (inverse of `box_of`)."""
        corners = box_to_corners_rc(box_xyxy)
        if self.axis is None:
            return corners
        full = np.zeros((4, 3))
        in_plane = [a for a in range(3) if a != self.axis]
        full[:, in_plane] = corners
        full[:, self.axis] = slice_index
        return full

    # ---- layers ----------------------------------------------------------------------------------
    def link(self, role: str) -> dict:
        """The metadata that ties a plugin layer in `role` to this image."""
        return {LINK: {"role": role, "image": image_id(self.image)}}

    def linked(self) -> list[Layer]:
        """Every plugin layer of this image, bottom first."""
        want = image_id(self.image)
        return [layer for layer in self.viewer.layers
                if is_plugin_layer(layer) and layer.metadata[LINK].get("image") == want]

    def find(self, role: str) -> Layer | None:
        """This image's plugin layer in `role` (BOXES, LABELS, ...), or None."""
        return next((layer for layer in self.linked() if layer.metadata[LINK].get("role") == role), None)

    def show(self, heatmap: bool) -> None:
        """The image and its layers visible (the heatmap as the dock's checkbox says; the coarse map stays
        as it is: hidden unless the user showed it)."""
        self.image.visible = True
        for layer in self.linked():
            role = layer.metadata[LINK]["role"]
            if role != COARSE:
                layer.visible = heatmap if role == UNCERTAINTY else True

    def hide(self) -> None:
        """The image and its layers hidden (another image is being annotated)."""
        self.image.visible = False
        for layer in self.linked():
            layer.visible = False

    def name_for(self, role: str) -> str:
        """A new layer's name: the role, or with the image's name once another image holds it."""
        return role if role not in self.viewer.layers else f"{role} ({self.image.name})"

    def _placement(self) -> dict:
        n = len(self.shape)
        return {"scale": self.image.scale[-n:], "translate": self.image.translate[-n:]}

    def _makers(self) -> list[tuple[str, Callable[[], Layer]]]:
        """The plugin layers, in display order (bottom first), each with how to make it."""
        shape, place, name, link = self.shape, self._placement(), self.name_for, self.link
        return [
            (UNCERTAINTY, lambda: Image(
                np.zeros(shape, np.float32), name=name(UNCERTAINTY), colormap=UNCERTAINTY_COLORMAP,
                blending="translucent", contrast_limits=UNCERTAINTY_LIMITS, metadata=link(UNCERTAINTY), **place)),
            (COARSE, lambda: Image(
                np.zeros(shape, np.float32), name=name(COARSE), colormap="gray", opacity=0.4, contrast_limits=(0, 1),
                visible=False, metadata=link(COARSE), **place)),
            (LABELS, lambda: Labels(
                np.zeros(shape, np.int32), name=name(LABELS), opacity=0.6, colormap=OBJECT_COLORS,
                metadata={"affine": self.image.metadata.get("affine"), **link(LABELS)}, **place)),
            (BOXES, lambda: Shapes(
                ndim=len(shape), name=name(BOXES), edge_color="lime", face_color="transparent", edge_width=2,
                features={"label": np.zeros(0, int)}, feature_defaults={"label": 0}, text=BOX_TEXT,
                metadata=link(BOXES), **place)),
        ]

    def add_missing(self, limit: int | None = None) -> int:
        """Add up to `limit` (default: all) missing plugin layers in display order; returns how many
        are still missing."""
        self.check_dimensions()
        missing = [make for role, make in self._makers() if self.find(role) is None]
        added = missing[:limit]
        for make in added:
            self.viewer.add_layer(make())
        return len(missing) - len(added)

    def ensure(self) -> tuple[Shapes, Labels, Image, Image]:
        """Create the plugin layers if missing (in display order); returns (boxes, labels, coarse, uncertainty)."""
        self.add_missing()
        shape = self.shape
        uncertainty, coarse, labels, boxes = (self.find(role) for role in (UNCERTAINTY, COARSE, LABELS, BOXES))
        for layer, want in ((uncertainty, shape), (coarse, shape), (labels, shape)):
            if layer.data.shape != want:
                raise InputError(f"layer '{layer.name}' has shape {layer.data.shape} but the image "
                                 f"'{self.image.name}' has {want}: rename or remove that layer")
        return boxes, labels, coarse, uncertainty

    def write_maps(self, slice_index: int | None, coarse: np.ndarray, uncertainty: np.ndarray,
                   refresh: bool = True) -> None:
        """Write a slice's coarse probability and uncertainty; `refresh`: redraw them (the slice is shown)."""
        for role, values in ((COARSE, coarse), (UNCERTAINTY, uncertainty)):
            layer = self.find(role)
            target = layer.data if self.axis is None else np.moveaxis(layer.data, self.axis, 0)[slice_index]
            target[...] = values
            if refresh:
                layer.refresh()


def fit_view_to(viewer, image) -> None:
    """Fit the view to `image` alone: hidden images of other sizes must not count (napari fits all layers).
    An image with fewer dimensions than the viewer (a 2D slice beside a volume) cannot be fitted alone by
    napari; then all layers are."""
    viewer.reset_view(layers=[image] if image.ndim == viewer.dims.ndim else None)


def fit_if_cropped(viewer, image) -> None:
    """The dock narrows the canvas: an image that was fitted to the wider canvas (centred, not panned)
    is now cropped, so fit it again; a view the user zoomed or panned stays as it is (2D display)."""
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 deprecates the latter
    if viewer.dims.ndisplay != 2:
        return
    zoom, center = camera.zoom, tuple(camera.center)
    fit_view_to(viewer, image)
    fitted_centre = np.allclose(center[-2:], tuple(camera.center)[-2:], atol=1e-3 * max(1.0, *np.abs(center)))
    if not (fitted_centre and zoom > camera.zoom * 1.001):  # not a cropped fitted view: put it back
        camera.center, camera.zoom = center, zoom
