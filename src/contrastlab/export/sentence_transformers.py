"""``format=sentence_transformers``: a bi-encoder (or CLIP text tower) on a Hugging Face model, written as a
sentence-transformers model folder, so that ``SentenceTransformer(output_dir).encode(texts)`` returns what
``contrastlab-embed`` / ``model.encode_document`` return for the checkpoint.

The folder (written without sentence-transformers; the layout any sentence-transformers version reads)::

    modules.json                  Transformer -> Pooling -> [Dense ...] -> [Dense: projection] -> Normalize
    config.json, model.safetensors, tokenizer files        the fine-tuned Hugging Face model (save_pretrained)
    sentence_bert_config.json     max_seq_length (the tower's max_length), do_lower_case
    config_sentence_transformers.json   prompts, similarity cosine
    1_Pooling/config.json         the tower's pooling mode(s)
    k_Dense/                      the tower's own Dense modules, then the bi-encoder's projection (if any)
    k_Normalize/                  L2 normalisation (the bi-encoder's embedding is normalised)

After writing, the folder is read back with contrastlab's own reader and must reproduce the checkpoint's
embeddings of a few validation texts (max abs difference <= ``atol``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastlab.encoders.st_folder import LEGACY_POOLING_KEYS, POOLING_MODES
from contrastlab.encoders.text import HFTextEncoder
from contrastlab.export.common import (
    ExportCheckFailed,
    ExportFormatError,
    TextTower,
    max_abs_diff,
    one_hf_tower,
    sample_texts,
)

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
DENSE = "sentence_transformers.models.Dense"
NORMALIZE = "sentence_transformers.models.Normalize"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def pooling_config(modes: tuple[str, ...], width: int) -> dict[str, Any]:
    """``1_Pooling/config.json``: the boolean keys every sentence-transformers version reads when the modes are
    in its canonical concatenation order (always, for one mode), else the newer ``pooling_mode`` list."""
    canonical = tuple(m for m in POOLING_MODES if m in modes) == modes
    if canonical:
        cfg: dict[str, Any] = {"word_embedding_dimension": width}
        cfg.update({key: mode in modes for key, mode in LEGACY_POOLING_KEYS.items()})
    else:
        cfg = {"embedding_dimension": width, "pooling_mode": list(modes)}
    cfg["include_prompt"] = True
    return cfg


def _dense(linear: nn.Linear, activation: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    act = type(activation)
    _write_json(
        folder / "config.json",
        {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": linear.bias is not None,
            "activation_function": f"{act.__module__}.{act.__qualname__}",
        },
    )
    state = {f"linear.{k}": v.detach().cpu().contiguous() for k, v in linear.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))


def write_folder(tower: TextTower, output_dir: Path) -> list[str]:
    """Write the sentence-transformers folder of ``tower`` (its encoder an :class:`HFTextEncoder`)."""
    enc = tower.encoder
    assert isinstance(enc, HFTextEncoder)
    output_dir.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(str(output_dir))
    enc.hf_tokenizer.save_pretrained(str(output_dir))
    _write_json(
        output_dir / "sentence_bert_config.json",
        {"max_seq_length": int(enc.max_length), "do_lower_case": bool(enc.layout.do_lower_case)},
    )
    _write_json(
        output_dir / "config_sentence_transformers.json",
        {
            "__version__": {"pytorch": torch.__version__},
            "prompts": dict(enc.layout.prompts),
            "default_prompt_name": enc.layout.default_prompt_name,
            "similarity_fn_name": "cosine",
        },
    )
    modules: list[dict[str, Any]] = [{"path": "", "type": TRANSFORMER}]
    width = int(enc.model.config.hidden_size)
    modules.append({"path": "1_Pooling", "type": POOLING})
    _write_json(output_dir / "1_Pooling" / "config.json", pooling_config(enc.pooling_modes, width))
    steps: list[tuple[str, nn.Module]] = [("Dense" if hasattr(m, "linear") else "Normalize", m) for m in enc.post]
    if tower.has_projection:
        steps.append(("Dense", tower.projection))
    if not steps or steps[-1][0] != "Normalize":
        steps.append(("Normalize", nn.Identity()))
    for kind, module in steps:
        path = f"{len(modules)}_{kind}"
        if kind == "Dense":
            linear = module.linear if hasattr(module, "linear") else module
            _dense(linear, getattr(module, "activation", nn.Identity()), output_dir / path)  # type: ignore[arg-type]
        else:
            (output_dir / path).mkdir(parents=True, exist_ok=True)
        modules.append({"path": path, "type": DENSE if kind == "Dense" else NORMALIZE})
    listing = [{"idx": i, "name": str(i), **m} for i, m in enumerate(modules)]
    _write_json(output_dir / "modules.json", listing)
    return sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())


def export(ckpt: Any, output_dir: str | Path, tower: str = "auto", atol: float = 1e-4) -> dict[str, Any]:
    """Write ``output_dir`` (see the module docstring); returns a summary."""
    out = Path(output_dir)
    if tower not in ("auto", "text", "query", "document"):
        raise ExportFormatError(f"format.tower={tower} is not a text tower; set format.tower=auto, query or document.")
    chosen = one_hf_tower(ckpt, tower, "sentence_transformers", " and a sentence-transformers folder holds one")
    files = write_folder(chosen, out)
    texts = sample_texts(ckpt)
    want = chosen.embed(texts)
    reread = HFTextEncoder(str(out), local_files_only=True).eval()
    got = TextTower("reread", reread, nn.Identity()).embed(texts)
    diff = max_abs_diff(got, want)
    if not diff <= atol:
        raise ExportCheckFailed(
            f"the exported folder {out} embeds {len(texts)} validation texts {diff:.2e} away from the checkpoint "
            f"(more than format.atol={atol}); please report this with the checkpoint's text_encoder settings."
        )
    return {
        "format": "sentence_transformers",
        "output_dir": str(out),
        "tower": chosen.name,
        "dim": int(want.shape[1]),
        "max_abs_diff": diff,
        "files": files,
        "load": f"SentenceTransformer({str(out)!r})",
    }
