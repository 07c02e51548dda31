"""``format=open_clip``: a CLIP fine-tuned from an open_clip model (``encoder=open_clip``), back in open_clip's format.

The folder holds:

* ``open_clip_pytorch_model.bin``: the state dict in open_clip's key layout (``visual.*`` from the image tower,
  the text tower's keys, ``logit_scale`` and, for models that have one, ``logit_bias``), which
  ``open_clip.create_model_and_transforms(<model>, pretrained=<file>)`` loads (add ``force_image_size=<size>``
  when the run changed ``encoder.image_size``);
* ``open_clip_config.json``: ``{"model_cfg", "preprocess_cfg"}`` as on the Hugging Face hub, so
  ``open_clip.create_model_and_transforms("local-dir:<folder>")`` loads architecture, weights and preprocessing
  in one call (also for a model config of your own), and ``encoder.model=local-dir:<folder>`` trains on.

The written folder is read back with open_clip and must give the checkpoint's image and text embeddings
(cosine >= ``1 - atol``) on sample inputs, or the export fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastlab.encoders.open_clip_towers import OpenCLIPImageTower
from contrastlab.export.common import SAMPLE_TEXTS, ExportCheckFailed, ExportFormatError

WEIGHTS = "open_clip_pytorch_model.bin"
CONFIG = "open_clip_config.json"


def open_clip_state_dict(model: Any) -> dict[str, Tensor]:
    """The CLIP objective's towers and logit scale as one open_clip state dict (CPU tensors)."""
    encoder: OpenCLIPImageTower = model.encoder
    state = {f"visual.{k}": v for k, v in encoder.visual.state_dict().items()}
    state.update(model.text_encoder.model.state_dict())
    state["logit_scale"] = model.logit_scale.detach().reshape(())
    if encoder.init_logit_bias is not None:  # the open_clip model has a logit_bias (SigLIP)
        bias = getattr(model.loss, "logit_bias", None)
        value = bias.detach() if isinstance(bias, Tensor) else torch.tensor(float(encoder.init_logit_bias))
        state["logit_bias"] = value.reshape(())
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@torch.no_grad()
def export(ckpt: Any, output_dir: str | Path, atol: float = 1e-4) -> dict[str, Any]:
    """Write ``open_clip_pytorch_model.bin`` and ``open_clip_config.json`` into ``output_dir`` and check them
    with open_clip; returns a summary (with the open_clip call that loads the folder)."""
    import open_clip

    model = ckpt.model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, OpenCLIPImageTower) or not getattr(model, "joint", False):
        kind = type(encoder).__name__ if encoder is not None else "none"
        raise ExportFormatError(
            f"format=open_clip exports a CLIP fine-tuned from an open_clip model (encoder=open_clip); this "
            f"{ckpt.objective} checkpoint's image tower is {kind}; use format=onnx instead."
        )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = open_clip_state_dict(model)
    torch.save(state, out / WEIGHTS)
    preprocess = {k: _jsonable(v) for k, v in encoder.preprocess.items()}
    config = {"model_cfg": encoder.model_cfg, "preprocess_cfg": preprocess}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    # read the folder back with open_clip and compare with the checkpoint on the same inputs
    loaded = open_clip.create_model(f"local-dir:{out.resolve()}").eval()
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        size = encoder.image_size
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        ours_img = model.encode_image(images.to(device)).float().cpu()
        theirs_img = F.normalize(loaded.encode_image(images).float(), dim=1)
        texts = list(SAMPLE_TEXTS)
        ours_txt = model.encode_text(texts).float().cpu()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{out.resolve()}")
        theirs_txt = F.normalize(loaded.encode_text(tokenizer(texts)).float(), dim=1)
    finally:
        model.train(was_training)
    image_cos = float(F.cosine_similarity(ours_img, theirs_img).min())
    text_cos = float(F.cosine_similarity(ours_txt, theirs_txt).min())
    scale = float(loaded.logit_scale.detach().reshape(-1)[0])
    if min(image_cos, text_cos) < 1 - atol or abs(scale - float(model.logit_scale)) > 1e-6:
        raise ExportCheckFailed(
            f"the exported open_clip model does not reproduce the checkpoint (image cosine {image_cos:.6f}, text "
            f"cosine {text_cos:.6f}, logit_scale {scale:.4f} vs {float(model.logit_scale):.4f}); please report it."
        )
    name, native = encoder.resolved_name, encoder.image_size
    by_name = None
    if not name.startswith(("local-dir:", "hf-hub:")):  # a built-in name, or a model config of your own
        register = (
            f"open_clip.add_model_config({encoder.model_name!r}); " if encoder.model_name.endswith(".json") else ""
        )
        original = open_clip.get_model_config(name) or {}
        force = "" if original.get("vision_cfg", {}).get("image_size") == native else f", force_image_size={native}"
        by_name = f"{register}open_clip.create_model_and_transforms({name!r}, pretrained={str(out / WEIGHTS)!r}{force})"
    return {
        "format": "open_clip",
        "output_dir": str(out),
        "model": encoder.model_name,
        "image_size": size,
        "logit_scale": float(model.logit_scale.exp()),
        "image_cosine_min": image_cos,
        "text_cosine_min": text_cos,
        "load": f"open_clip.create_model_and_transforms('local-dir:{out}')",
        "load_by_name": by_name,
        "files": [WEIGHTS, CONFIG],
    }
