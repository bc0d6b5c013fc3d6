"""Read images (PNG/JPEG/TIFF/NIfTI/NumPy) and write masks atomically, keeping NIfTI affines.

Arrays follow napari's order: volumes are (z, y, x) and 2D images (y, x[, c]). NIfTI stores
(x, y, z); the reader transposes and the writer transposes back, so a mask written for a NIfTI
source lands on the same voxels with the source affine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._atomic import atomic_write, atomic_write_many
from ..errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class ImageData:
    """Pixels in napari order plus what is needed to write results back in place."""

    data: np.ndarray
    path: Path | None = None
    affine: np.ndarray | None = None  # NIfTI voxel -> world (4x4), in NIfTI's own (x, y, z) order
    spacing: tuple[float, ...] | None = None  # napari order
    metadata: dict = field(default_factory=dict)
    rgb: bool = False  # last axis is colour, not space

    @property
    def is_volume(self) -> bool:
        return self.data.ndim == 3 and not self.rgb


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | os.PathLike) -> ImageData:
    """Read a 2D image or a 3D volume; raises `InputError` with one clear message when it cannot."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = _read_nifti(path)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            array = np.asarray(tifffile.imread(path))
            image = ImageData(array, path, rgb=array.ndim == 3 and array.shape[-1] in (3, 4))
        elif suffix in PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as handle:
                mode = handle.mode
                array = np.asarray(handle.convert("RGB") if mode in ("P", "CMYK", "YCbCr", "LA", "RGBA")
                                   else handle)
            image = ImageData(array, path, rgb=array.ndim == 3)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            image = ImageData(array, path, rgb=array.ndim == 3 and array.shape[-1] in (3, 4))
        else:
            raise InputError(f"{path}: unsupported file type {suffix!r} (use PNG, JPEG, TIFF, NIfTI or .npy)")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    data = image.data
    if data.ndim == 3 and data.shape[-1] == 1:
        image.data = data = data[..., 0]
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D image or a 3D volume, got an array of shape {data.shape}")
    return image


def _read_nifti(path: Path) -> ImageData:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise InputError(f"{path}: {data.ndim}D image of shape {data.shape}; only 2D and 3D are supported "
                         "(extract one volume first)")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    # NIfTI (x, y, z) -> napari (z, y, x)
    array = np.ascontiguousarray(data.T)
    return ImageData(array, path, affine=np.asarray(img.affine, dtype=np.float64), spacing=zooms[::-1],
                     metadata={"nifti_shape": data.shape})


def select_slice(image: ImageData, slice_index: int | None) -> np.ndarray:
    """The 2D slice to segment: the image itself, or slice `slice_index` along the first (z) axis."""
    if not image.is_volume:
        if slice_index not in (None, 0):
            raise InputError(f"--slice {slice_index} given, but the image is 2D")
        return image.data
    depth = image.data.shape[0]
    if slice_index is None:
        raise InputError(f"the image is a volume of {depth} slices: choose one with --slice Z (0..{depth - 1})")
    if not 0 <= slice_index < depth:
        raise InputError(f"slice {slice_index} is outside the volume (0..{depth - 1})")
    return image.data[slice_index]


def write_atomic(path: str | os.PathLike, writer) -> Path:
    """Atomic write; the temporary has no data extension, so `writer` must name its format."""
    return atomic_write(path, writer)


OUTPUT_SUFFIXES = (".png", *TIFF_SUFFIXES, *NIFTI_SUFFIXES, ".npy")


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output before any work is done: an unsupported or lossy type, a directory, or a
    folder that cannot be created or written."""
    path = Path(path)
    suffix = _suffix(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name, e.g. {path / 'mask.png'}")
    if suffix in (".jpg", ".jpeg"):
        raise InputError(f"{path}: JPEG is lossy and would corrupt a mask; use PNG, TIFF or NIfTI")
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"{path}: unsupported output type {suffix!r} (use .png, .tif, .nii.gz or .npy)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # missing folders are created on write
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write in {folder} (read-only or no permission)")
    return path


def _with_handle(write: Callable[[BinaryIO], None]) -> Callable[[str], None]:
    """A temp-path writer from one that writes to an open binary file."""

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return writer


def _png_pixels(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        top = float(np.nanmax(array)) if array.size and np.isfinite(array).any() else 1.0
        return np.clip(np.round(np.nan_to_num(array) * 255.0 / max(top, 1e-12)), 0, 255).astype(np.uint8)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise InputError(f"{path}: values {low}..{high} do not fit a PNG (0..65535); use .tif, .nii.gz or .npy")
    return array.astype(np.uint16 if high > 255 else np.uint8)


def encoder(path: str | os.PathLike, array: np.ndarray, source: ImageData | None = None,
            slice_index: int | None = None) -> Callable[[str], None]:
    """Check that `array` can be written to `path` and return the writer (tmp path -> file) that does it."""
    path = Path(path)
    suffix = _suffix(path)
    array = np.asarray(array)
    if suffix in (".jpg", ".jpeg"):
        raise InputError(f"{path}: JPEG is lossy and would corrupt a mask; use PNG, TIFF or NIfTI")
    if suffix in PIL_SUFFIXES:
        from PIL import Image

        png = _png_pixels(path, array)
        return _with_handle(lambda handle: Image.fromarray(png).save(handle, format="PNG"))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        return _with_handle(lambda handle: tifffile.imwrite(handle, array))
    if suffix == ".npy":
        return _with_handle(lambda handle: np.save(handle, array, allow_pickle=False))
    if suffix in NIFTI_SUFFIXES:
        return _nifti_writer(path, array, source, slice_index)
    raise InputError(f"{path}: unsupported output type {suffix!r} (use .png, .tif, .nii.gz or .npy)")


def _nifti_writer(path: Path, array: np.ndarray, source: ImageData | None,
                  slice_index: int | None) -> Callable[[str], None]:
    import gzip

    import nibabel as nib

    data = array
    if source is not None and source.is_volume and array.ndim == 2:
        if slice_index is None:
            raise InputError("a 2D result for a volume needs its slice index")
        data = np.zeros(source.data.shape, dtype=array.dtype)
        data[slice_index] = array
    affine = source.affine if source is not None and source.affine is not None else np.eye(4)
    nifti = data.T if data.ndim == 3 else data.T[..., None]  # napari (z, y, x) -> NIfTI (x, y, z)
    image = nib.Nifti1Image(np.ascontiguousarray(nifti), affine)

    def write(handle: BinaryIO) -> None:  # by handle: the temporary's name has no .nii.gz for nibabel to go by
        if _suffix(path) == ".nii":
            holder = nib.FileHolder(fileobj=handle)
            image.to_file_map({"image": holder, "header": holder})
            return
        with gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=1, mtime=0) as packed:
            holder = nib.FileHolder(fileobj=packed)
            image.to_file_map({"image": holder, "header": holder})

    return _with_handle(write)


def write_array(path: str | os.PathLike, array: np.ndarray, source: ImageData | None = None,
                slice_index: int | None = None, overwrite: bool = True) -> Path:
    """Write a mask or a float map by extension (PNG, TIFF, NIfTI, .npy), atomically.

    NIfTI output keeps the source's affine; a 2D result for one slice of a volume is written into
    a volume of the source's shape (zeros elsewhere) so it overlays the source in any viewer.
    `overwrite=False` refuses to replace an existing file (`FileExistsError`).
    """
    return atomic_write(path, encoder(path, array, source, slice_index), overwrite=overwrite)


def write_arrays(items: list[tuple[str | os.PathLike, np.ndarray]], source: ImageData | None = None,
                 slice_index: int | None = None) -> list[Path]:
    """Write several outputs all or nothing: all are checked and written to temporaries first."""
    writers = [(path, encoder(path, array, source, slice_index)) for path, array in items]
    return atomic_write_many(writers)
