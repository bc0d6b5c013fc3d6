"""napari sample data: CT slices with expert masks (CC BY 4.0) and a generated 3D phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .io.phantoms import phantom_volume


def sample_dir() -> Path:
    """`sample_data/`: inside the installed wheel (mapped there at build time), else the source tree's root."""
    packaged = Path(__file__).resolve().parent / "sample_data"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "sample_data"


CT_DIR = sample_dir() / "ct_slices"
CT_SAMPLES = {"ct_abdomen": "amos_0006_90", "ct_thorax": "s0114_111", "ct_pelvis": "s0619_32"}
PHANTOM_SPACING = (2.5, 0.8, 0.8)  # mm, (z, y, x)
# Structures of the generated phantom as unions of its label values (the lesion lies inside the organ).
PHANTOM_STRUCTURES = {"organ": (1, 2), "lesion": (2,)}


def load_ct_slice(stem: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(grey uint8 image, labels uint8, structure names) for one bundled CT slice, upright."""
    image = np.asarray(Image.open(CT_DIR / "images" / f"{stem}.png"))[..., 0]
    masks = sorted((CT_DIR / "masks").glob(f"{stem}_*.png"))
    labels = np.zeros(image.shape, np.uint8)
    names = []
    for value, path in enumerate(masks, start=1):
        labels[np.asarray(Image.open(path)) > 127] = value
        names.append(path.stem[len(stem) + 1:])
    # All five slices are stored upside down (CT table and spine at the top; the data notes mention
    # only the AMOS ones): flip them to the radiological convention, anterior up.
    return np.flipud(image).copy(), np.flipud(labels).copy(), names


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A bundled sample as arrays, the way `imedsam predict --image sample:NAME` reads it: `ct_abdomen`,
    `ct_thorax`, `ct_pelvis` (upright uint8 CT slices) or `phantom_3d` (a CT volume in HU, (z, y, x));
    with `/STRUCTURE` (`ct_abdomen/liver_000`, `phantom_3d/organ`) also that structure's mask, else None."""
    from .errors import InputError
    from .io.phantoms import phantom_volume

    key, _, structure = name.removeprefix("sample:").partition("/")
    if key == "phantom_3d":
        pixels, labels = phantom_volume()
        names = list(PHANTOM_STRUCTURES)
    elif key in CT_SAMPLES:
        pixels, labels, names = load_ct_slice(CT_SAMPLES[key])
    else:
        raise InputError(f"unknown sample {key!r}; known: {', '.join([*CT_SAMPLES, 'phantom_3d'])}")
    if not structure:
        return pixels, None
    if structure not in names:
        raise InputError(f"sample {key} has no structure {structure!r}; it has: {', '.join(names)}")
    if key == "phantom_3d":
        return pixels, np.isin(labels, PHANTOM_STRUCTURES[structure])
    return pixels, labels == names.index(structure) + 1


def _ct_layers(stem: str, title: str) -> list[tuple]:
    image, labels, names = load_ct_slice(stem)
    source = "AMOS (CC BY 4.0)" if stem.startswith("amos") else "TotalSegmentator (CC BY 4.0)"
    meta = {"source": source, "structures": {i + 1: n for i, n in enumerate(names)}}
    return [
        (image, {"name": title, "metadata": meta}, "image"),
        (labels, {"name": f"{title} expert masks", "visible": False, "metadata": meta}, "labels"),
    ]


def ct_abdomen() -> list[tuple]:
    return _ct_layers(CT_SAMPLES["ct_abdomen"], "CT abdomen")


def ct_thorax() -> list[tuple]:
    return _ct_layers(CT_SAMPLES["ct_thorax"], "CT thorax")


def ct_pelvis() -> list[tuple]:
    return _ct_layers(CT_SAMPLES["ct_pelvis"], "CT pelvis")


def phantom_3d() -> list[tuple]:
    volume, labels = phantom_volume()
    scale = PHANTOM_SPACING
    return [
        (volume, {"name": "phantom CT (HU)", "scale": scale, "contrast_limits": (-160, 240)}, "image"),
        (labels, {"name": "phantom truth", "scale": scale, "visible": False}, "labels"),
    ]
