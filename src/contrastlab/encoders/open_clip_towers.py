"""Both towers of an open_clip model (OpenAI CLIP and the OpenCLIP reproductions) as contrastlab towers.

``encoder=open_clip encoder.model=ViT-B-32 encoder.pretrained=laion2b_s34b_b79k`` builds the open_clip
model once and splits it without copying a weight:

* :class:`OpenCLIPImageTower` (the ``encoder``): ``model.visual``, (B, 3, S, S) -> (B, embed_dim), i.e.
  ``encode_image(normalize=False)`` including the visual projection;
* :class:`OpenCLIPTextTower` (handed to the objective as its text tower): the rest of the model without
  ``logit_scale``, ``tokenize(texts) -> {"input_ids": (B, context_length)}`` with open_clip's tokenizer and
  ``forward = encode_text(normalize=False)`` including the text projection;
* ``init_logit_scale`` (and ``init_logit_bias`` for SigLIP models) and ``preprocess`` (size, mean, std,
  interpolation, resize mode) as open_clip sets them for this model and tag.

``model``: a built-in open_clip name (``open_clip.list_models()``), a model-config JSON file (registered
with ``open_clip.add_model_config``; its stem is the name), or ``local-dir:<folder>`` / ``hf-hub:<repo>``
(a folder or hub repository with ``open_clip_config.json`` and weights, as ``contrastlab-export
format=open_clip`` writes). ``pretrained``: a tag of that model (resolved through the Hugging Face cache:
offline after one download), or a weights file (a state dict or an open_clip checkpoint
``{"state_dict": ...}``, possibly ``module.``-prefixed); None: random initialisation.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from contrastlab.encoders.text import _TextTower
from contrastlab.encoders.timm_encoder import EncoderInputError, PretrainedWeightsError, _hub_cache
from contrastlab.errors import BadInputError

SCHEMAS = ("local-dir:", "hf-hub:")


class OpenCLIPModelError(BadInputError, ValueError):
    """``encoder.model`` names no open_clip model (the message lists close names)."""


class OpenCLIPWeightsError(PretrainedWeightsError):
    """``encoder.pretrained`` is not a tag of the model, is not cached offline, or does not fit the model."""


# --- names, configs and preprocessing (no weights are built) -------------------------------------------
def resolve_model(model: str) -> str:
    """The name open_clip knows ``model`` by: a built-in name, the stem of a registered JSON config, or a
    ``local-dir:``/``hf-hub:`` identifier. Unknown names raise :class:`OpenCLIPModelError` listing close ones."""
    import open_clip

    model = str(model)
    if model.startswith(SCHEMAS):
        if model.startswith("local-dir:") and not (Path(model[10:]).expanduser() / "open_clip_config.json").is_file():
            raise OpenCLIPModelError(
                f"encoder.model={model} has no open_clip_config.json; point local-dir: at a folder written by "
                "contrastlab-export format=open_clip (or open_clip's save format)."
            )
        return model
    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise OpenCLIPModelError(
                f"encoder.model={model} is not a file; give an open_clip model name or a model-config JSON file."
            )
        open_clip.add_model_config(path)
        return path.stem
    names = open_clip.list_models()
    if model not in names:
        close = difflib.get_close_matches(model, names, n=6, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else f"{len(names)} names in open_clip.list_models()"
        raise OpenCLIPModelError(f"encoder.model={model} is not an open_clip model ({hint}); set encoder.model to one.")
    return model


def _json_config(name: str, cache_dir: str | None) -> dict[str, Any]:
    """``open_clip_config.json`` of a ``local-dir:`` folder or an ``hf-hub:`` repository."""
    if name.startswith("local-dir:"):
        return json.loads((Path(name[10:]).expanduser() / "open_clip_config.json").read_text())
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name[7:], "open_clip_config.json", cache_dir=cache_dir)
    except Exception as err:  # offline and not cached, no such repository
        raise OpenCLIPWeightsError(
            f"encoder.model={name}: its open_clip_config.json is not in the Hugging Face cache "
            f"({cache_dir or _hub_cache()}) and could not be downloaded ({type(err).__name__}); run once with "
            "network access to cache it, or export the model to a folder and use encoder.model=local-dir:<folder>."
        ) from err
    return json.loads(Path(path).read_text())


def model_config(name: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The architecture (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) of a resolved model name."""
    import open_clip

    if name.startswith(SCHEMAS):
        return copy.deepcopy(_json_config(name, cache_dir)["model_cfg"])
    return copy.deepcopy(open_clip.get_model_config(name))


def _square(size: Any, key: str) -> int:
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise EncoderInputError(f"{key}={list(size)} is not square; contrastlab feeds square images.")
        size = size[0]
    return int(size)


def check_image_size(model: str, vision_cfg: dict[str, Any], size: int, native: int, loads_weights: bool) -> None:
    """Refuse an image size the vision tower cannot take: a ViT needs a multiple of its patch size, a
    ModifiedResNet a multiple of 32 (and, with pretrained weights, its native size: the attention pool's
    position embedding is not resized)."""
    if vision_cfg.get("timm_model_name"):
        return  # timm towers check their input themselves (EncoderInputError at the first forward)
    if isinstance(vision_cfg.get("layers"), list | tuple):
        if size < 32 or size % 32:
            raise EncoderInputError(
                f"encoder.image_size={size} does not fit encoder.model={model}, a ResNet that downsamples 32x; "
                f"set encoder.image_size to a multiple of 32 such as {max(32, round(size / 32) * 32)}."
            )
        if loads_weights and size != native:
            raise EncoderInputError(
                f"encoder.image_size={size} does not fit the pretrained encoder.model={model}: its attention pool "
                f"is fixed to {native}x{native} images; set encoder.image_size={native} (or null)."
            )
        return
    patch = _square(vision_cfg.get("patch_size", 16), "encoder.patch_size")
    if size < patch or size % patch:
        raise EncoderInputError(
            f"encoder.image_size={size} does not fit encoder.model={model}, a ViT with {patch}x{patch} patches; "
            f"set encoder.image_size to a multiple of {patch} such as {max(patch, round(size / patch) * patch)}."
        )


def _tag_config(name: str, pretrained: str | None) -> dict[str, Any] | None:
    """open_clip's config of ``pretrained`` as a tag of ``name`` (None when it is a file or absent)."""
    import open_clip

    if not pretrained or name.startswith(SCHEMAS) or Path(str(pretrained)).expanduser().is_file():
        return None
    cfg = open_clip.get_pretrained_cfg(name, str(pretrained))
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        listed = ", ".join(tags) if tags else "none"
        raise OpenCLIPWeightsError(
            f"encoder.pretrained={pretrained} is neither a pretrained tag of encoder.model={name} (tags: {listed}) "
            "nor a weights file; set encoder.pretrained to one of those, a file, or null (random weights)."
        )
    return cfg


def preprocess_settings(
    model: str = "ViT-B-32",
    pretrained: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """What the model expects of its images, read from configs only (nothing is built or downloaded
    besides an ``hf-hub:`` config): ``{"image_size", "mean", "std", "interpolation", "resize_mode",
    "channels": 3}`` -- open_clip's ``PreprocessCfg`` defaults, overlaid with the tag's (or the
    ``open_clip_config.json``'s) values, at ``image_size`` (default: the model's)."""
    from open_clip.transform import PreprocessCfg

    name = resolve_model(model)
    cfg = model_config(name, cache_dir)
    pre: dict[str, Any] = {
        k: getattr(PreprocessCfg(), k) for k in ("size", "mean", "std", "interpolation", "resize_mode")
    }
    if name.startswith(SCHEMAS):
        pre.update({k: v for k, v in _json_config(name, cache_dir).get("preprocess_cfg", {}).items() if k in pre})
    tag = _tag_config(name, pretrained)
    if tag:
        pre.update({k: v for k, v in tag.items() if k in pre})
    native = _square(cfg["vision_cfg"].get("image_size", 224), "encoder.model's image_size")
    size = _square(image_size, "encoder.image_size") if image_size else native
    loads = bool(pretrained) or name.startswith(SCHEMAS)
    check_image_size(str(model), cfg["vision_cfg"], size, native, loads)
    return {
        "image_size": size,
        "mean": [float(m) for m in pre["mean"]],
        "std": [float(s) for s in pre["std"]],
        "interpolation": str(pre["interpolation"]),
        "resize_mode": str(pre["resize_mode"]),
        "channels": 3,
    }


# --- weights -----------------------------------------------------------------------------------------------
def _cache_dir_of(tag: dict[str, Any], cache_dir: str | None) -> str:
    if tag.get("hf_hub"):
        return str(cache_dir or _hub_cache())
    return str(cache_dir or os.path.expanduser("~/.cache/clip"))


def _describe_mismatch(model: nn.Module, state: dict[str, Tensor]) -> str:
    """``n missing (first ...), m unexpected (first ...), k of another shape (first: key file (..) vs model (..))``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} of another shape (first: {k}, file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        )
    return ", ".join(parts) or "the weights do not load"


def load_weights_file(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a state dict / open_clip checkpoint file into ``model`` (open_clip's loader: ``module.``
    prefixes stripped, position embeddings resized); one-sentence errors for unreadable or foreign files
    (the file is read a second time only to explain a failure)."""
    import open_clip

    key = f"encoder.pretrained={path}"
    try:
        open_clip.load_checkpoint(model, str(path))
        return
    except Exception as err:  # unreadable, not a state dict, or another architecture: find out which
        failure = err
    try:
        state = open_clip.factory.load_state_dict(str(path))
    except Exception as err:  # not a torch file, pickled code refused by weights_only, truncated...
        first = str(err).splitlines()[0] if str(err) else ""
        raise OpenCLIPWeightsError(
            f"{key} could not be read ({type(err).__name__}: {first}); pass a state dict or an open_clip "
            "checkpoint saved with torch.save."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OpenCLIPWeightsError(f"{key} holds no state dict of tensors; pass one saved with torch.save.")
    raise OpenCLIPWeightsError(
        f"{key} does not fit encoder.model={model_name}: {_describe_mismatch(model, state)}; pass weights of "
        "this architecture, or set encoder.model to the file's."
    ) from failure


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_notice(active: bool) -> Iterator[None]:
    """Drop open_clip's "Model initialized randomly" warning while ``active`` (weights follow from a file)."""
    notice = _RandomInitNotice()
    if active:
        logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def create_model(
    model: str, pretrained: str | None = None, image_size: int | None = None, cache_dir: str | None = None
) -> tuple[nn.Module, str]:
    """``(open_clip model, resolved name)``, weights from ``pretrained`` (tag or file) or random."""
    import open_clip

    name = resolve_model(model)
    cfg = model_config(name, cache_dir)
    native = _square(cfg["vision_cfg"].get("image_size", 224), "encoder.model's image_size")
    size = _square(image_size, "encoder.image_size") if image_size else None
    check_image_size(
        str(model), cfg["vision_cfg"], size or native, native, bool(pretrained) or name.startswith(SCHEMAS)
    )
    kw: dict[str, Any] = {"force_image_size": size} if size and size != native else {}
    tag = _tag_config(name, pretrained)
    try:
        if name.startswith(SCHEMAS):
            return open_clip.create_model(name, cache_dir=cache_dir, **kw), name
        if tag is not None:
            return open_clip.create_model(name, pretrained=str(pretrained), cache_dir=cache_dir, **kw), name
        with _quiet_random_init_notice(bool(pretrained)):  # the weights file is loaded right below
            clip = open_clip.create_model(name, pretrained_text=False, **kw)
    except RuntimeError as err:
        if tag is None and not name.startswith(SCHEMAS):
            raise
        where = _cache_dir_of(tag or {"hf_hub": True}, cache_dir)
        what = f"encoder.pretrained={pretrained}" if tag is not None else f"encoder.model={name}"
        raise OpenCLIPWeightsError(
            f"{what} could not load the weights of {model}: they are not in the cache ({where}) and could not "
            f"be downloaded ({type(err).__name__}); run once with network access to cache them, or set "
            "encoder.pretrained to a weights file."
        ) from err
    if pretrained:
        load_weights_file(clip, Path(str(pretrained)).expanduser(), str(model))
    return clip, name


# --- the towers ------------------------------------------------------------------------------------------
class OpenCLIPTextTower(_TextTower):
    """The text half of an open_clip model: ``tokenize`` with open_clip's tokenizer (padded to the context
    length), ``forward(input_ids) = encode_text(input_ids)`` (B, embed_dim), the text projection included."""

    def __init__(self, model: nn.Module, tokenizer: Any, out_dim: int) -> None:
        super().__init__()
        self.model, self.tokenizer, self.out_dim = model, tokenizer, out_dim

    def tokenize(self, texts: Any) -> dict[str, Tensor]:
        return {"input_ids": self.tokenizer(list(texts)).long()}

    def forward(self, input_ids: Tensor, **_: Any) -> Tensor:
        return self.model.encode_text(input_ids)

    def layer_groups(self) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Parameter]]:
        """``(before the blocks, the residual blocks, after them)``: token/position embeddings; the
        transformer's blocks; the final norm and the text projection (and any pooler)."""
        text = getattr(self.model, "text", self.model)
        blocks = residual_blocks(getattr(text, "transformer", None))
        before_names = ("token_embedding", "positional_embedding", "cls_emb", "embeddings")
        return _split(text, blocks, before_names)


class OpenCLIPImageTower(nn.Module):
    """``encoder=open_clip``: the image half of an open_clip model, (B, 3, S, S) -> (B, embed_dim).

    Args:
        model: open_clip model name, model-config JSON file, or ``local-dir:``/``hf-hub:`` identifier.
        pretrained: a tag of the model (Hugging Face cache) or a weights file; None: random weights.
        image_size: the square input size (default: the model's); position embeddings of pretrained ViT
            weights are resized to it.
        cache_dir: where tags are looked up and downloaded (default: the Hugging Face cache).
        context_length: the tokenizer's context length (default: the model's).

    The text half travels as ``paired_text_tower`` (not a submodule of this one: the objective registers it
    as its text tower), with ``init_logit_scale``/``init_logit_bias`` and ``preprocess``.
    ``OpenCLIPImageTower.preprocess_settings(**encoder config)`` gives the data settings without building
    the model (what :func:`contrastlab.config.build.build_datamodule` applies).
    """

    preprocess_settings = staticmethod(preprocess_settings)

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        image_size: int | None = None,
        cache_dir: str | None = None,
        context_length: int | None = None,
    ) -> None:
        super().__init__()
        import open_clip

        clip, name = create_model(model, pretrained, image_size, cache_dir)
        self.model_name, self.resolved_name, self.pretrained = str(model), name, pretrained
        self.model_cfg = model_config(name, cache_dir)
        self.preprocess = copy.deepcopy(open_clip.get_model_preprocess_cfg(clip))
        self.image_size = _square(self.preprocess.get("size", clip.visual.image_size), "encoder.image_size")
        self.model_cfg["vision_cfg"]["image_size"] = self.image_size
        self.visual = clip.visual
        self.out_dim = int(getattr(clip.visual, "output_dim", None) or self.model_cfg["embed_dim"])
        self.init_logit_scale = float(clip.logit_scale.detach().reshape(-1)[0])
        bias = getattr(clip, "logit_bias", None)
        self.init_logit_bias = None if bias is None else float(bias.detach().reshape(-1)[0])
        del clip.visual
        del clip.logit_scale
        if isinstance(bias, nn.Parameter):
            del clip.logit_bias
        try:
            tokenizer = open_clip.get_tokenizer(name, context_length=context_length, cache_dir=cache_dir)
        except OSError as err:  # a Hugging Face tokenizer that is not cached
            raise OpenCLIPWeightsError(
                f"encoder.model={model}: its tokenizer is not in the Hugging Face cache ({cache_dir or _hub_cache()}) "
                f"and could not be downloaded ({type(err).__name__}); run once with network access to cache it."
            ) from err
        # a plain attribute, not a submodule: its parameters belong to the objective's text tower only
        self.__dict__["paired_text_tower"] = OpenCLIPTextTower(clip, tokenizer, self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        size = self.image_size
        if x.shape[-2:] != (size, size):
            raise EncoderInputError(
                f"encoder.model={self.model_name} takes {size}x{size} images, not {x.shape[-2]}x{x.shape[-1]}; "
                f"set data.image_size={size} (the data takes it from the encoder) or encoder.image_size={x.shape[-1]}."
            )
        return self.visual(x)

    def layer_groups(self) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Parameter]]:
        """``(before the blocks, the residual blocks, after them)``: the patch/stem layers and embeddings;
        the transformer blocks (ResNet: the bottlenecks of every stage); the final norm, pooling and
        projection."""
        v = self.visual
        if hasattr(v, "transformer"):  # ViT
            stem = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
            return _split(v, residual_blocks(v.transformer), stem)
        if hasattr(v, "layer1"):  # ModifiedResNet
            blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(v, name)]
            stem = [p for n, p in v.named_parameters() if not n.startswith(("layer", "attnpool"))]
            return stem, blocks, list(v.attnpool.parameters())
        return split_by_order(v, residual_blocks(getattr(v, "trunk", v)))  # a timm tower


def residual_blocks(module: nn.Module | None) -> list[nn.Module]:
    """The residual blocks under ``module``: the ``ModuleList``/``Sequential`` of at least two same-type
    children holding the most parameters."""
    if module is None:
        return []
    best: list[nn.Module] = []
    size = 0
    for m in module.modules():
        children = list(m.children()) if isinstance(m, nn.ModuleList | nn.Sequential) else []
        n = sum(p.numel() for p in m.parameters())
        if len(children) >= 2 and len({type(c) for c in children}) == 1 and n > size:
            best, size = children, n
    return best


def _split(
    root: nn.Module, blocks: list[nn.Module], before_names: tuple[str, ...]
) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Parameter]]:
    """Parameters of ``root`` outside ``blocks``, split into those with a name part in ``before_names``
    (before the blocks: stem, embeddings) and the rest (after them: final norm, pooling, projection)."""
    inside = {id(p) for b in blocks for p in b.parameters()}
    before, after = [], []
    for n, p in root.named_parameters():
        if id(p) in inside:
            continue
        (before if set(n.split(".")) & set(before_names) else after).append(p)
    return before, blocks, after


def split_by_order(
    module: nn.Module, blocks: list[nn.Module]
) -> tuple[list[nn.Parameter], list[nn.Module], list[nn.Parameter]]:
    """``(before, blocks, after)`` by registration order: the parameters of ``module`` outside ``blocks``
    registered before the last block's parameters, and those registered after them."""
    inside = {id(p) for b in blocks for p in b.parameters()}
    params = list(module.parameters())
    last = max((i for i, p in enumerate(params) if id(p) in inside), default=len(params) - 1)
    before = [p for p in params[:last] if id(p) not in inside]
    return before, blocks, [p for p in params[last + 1 :] if id(p) not in inside]
