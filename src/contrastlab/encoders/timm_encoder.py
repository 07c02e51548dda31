"""Any timm model by name as a feature extractor (``num_classes=0``)."""

from __future__ import annotations

import http.client

import timm
from torch import Tensor, nn

from contrastlab.errors import BadInputError


class PretrainedWeightsError(BadInputError, OSError):
    """``encoder.pretrained=true`` (or ``encoder.checkpoint_path``) found no weights; names the key."""


class EncoderInputError(BadInputError, ValueError):
    """The images do not fit the timm model (too small for its downsampling, or not its fixed size)."""


class TimmEncoder(nn.Module):
    """(B, C, H, W) -> (B, num_features) from ``timm.create_model(name, num_classes=0)``.

    ``cifar_stem=True`` swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 conv and no pool,
    the usual change for 32x32 inputs. ``pretrained`` downloads hub weights (needs network, or the
    weights in the local Hugging Face cache) or reads ``checkpoint_path``. Weights that cannot be
    found raise :class:`PretrainedWeightsError`; images the model cannot take (smaller than its total
    stride, or not its fixed input size) raise :class:`EncoderInputError` at the first forward.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        in_chans: int = 3,
        cifar_stem: bool = False,
        checkpoint_path: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.name = name
        extra = {"pretrained_cfg_overlay": {"file": checkpoint_path}} if checkpoint_path else {}
        try:
            self.model = timm.create_model(
                name,
                pretrained=pretrained or bool(checkpoint_path),
                num_classes=0,
                in_chans=in_chans,
                **extra,
                **kwargs,
            )
        except (OSError, http.client.HTTPException) as err:  # no network / not cached / no such file
            if checkpoint_path:
                raise PretrainedWeightsError(
                    f"encoder.checkpoint_path={checkpoint_path} could not be read ({type(err).__name__}: {err}); "
                    "point it at a weights file of the model, or set encoder.checkpoint_path=null."
                ) from err
            if not pretrained:
                raise
            raise PretrainedWeightsError(
                f"encoder.pretrained=true could not load the weights of '{name}': they are not in the local "
                f"Hugging Face cache ({_hub_cache()}) and could not be downloaded ({type(err).__name__}); "
                "run once with network access to cache them, set encoder.checkpoint_path to a weights file, "
                "or set encoder.pretrained=false."
            ) from err
        if cifar_stem:
            if not (hasattr(self.model, "conv1") and hasattr(self.model, "maxpool")):
                raise ValueError(f"encoder.cifar_stem=true needs a ResNet-style model, '{name}' has no conv1/maxpool.")
            out_ch = self.model.conv1.out_channels
            self.model.conv1 = nn.Conv2d(in_chans, out_ch, 3, stride=1, padding=1, bias=False)
            self.model.maxpool = nn.Identity()
        self.out_dim: int = self.model.num_features

    def forward(self, x: Tensor) -> Tensor:
        try:
            return self.model(x)
        except (RuntimeError, AssertionError) as err:
            message = self._input_error(x, err)
            if message is None:
                raise
            raise EncoderInputError(message) from err

    def _input_error(self, x: Tensor, err: BaseException) -> str | None:
        """One sentence naming ``data.image_size`` when ``err`` says the images do not fit the model."""
        text = str(err)
        h, w = x.shape[-2:]
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        if isinstance(err, AssertionError) and "doesn't match model" in text and cfg.get("fixed_input_size"):
            size = cfg["input_size"][-1]
            return (
                f"encoder.name={self.name} takes only {size}x{size} images, not the {h}x{w} images of "
                f"data.image_size; set data.image_size={size} (or +encoder.img_size={h} for a ViT)."
            )
        if isinstance(err, RuntimeError) and ("input size" in text or "too small" in text):
            info = getattr(self.model, "feature_info", None)
            stride = info[-1]["reduction"] if info else None
            need = f"{stride} or larger" if stride else "larger"
            return (
                f"encoder.name={self.name} downsamples its input"
                + (f" {stride}x" if stride else "")
                + f", too much for the {h}x{w} images of data.image_size; set data.image_size={need}, "
                "or pick an encoder for small images (encoder=resnet18_cifar or encoder=small_cnn)."
            )
        return None


def _hub_cache() -> str:
    """Where huggingface_hub looks for cached weights (``$HF_HOME/hub`` unless ``HF_HUB_CACHE`` is set)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return "$HF_HOME/hub"
    return str(constants.HF_HUB_CACHE)
