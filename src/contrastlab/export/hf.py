"""``format=hf``: the fine-tuned Hugging Face text model and its tokenizer, ``save_pretrained`` into a folder that
``AutoModel.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load.

The folder holds the transformer only: the pooling, any Dense modules and a bi-encoder projection are not part
of a Hugging Face model (the summary names them); ``format=sentence_transformers`` keeps the whole embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contrastlab.export.common import one_hf_tower


def export(ckpt: Any, output_dir: str | Path, tower: str = "auto") -> dict[str, Any]:
    """``save_pretrained`` of the text tower's model and tokenizer into ``output_dir``; returns a summary."""
    out = Path(output_dir)
    chosen = one_hf_tower(ckpt, tower, "hf")
    enc = chosen.encoder
    out.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(str(out))
    enc.hf_tokenizer.save_pretrained(str(out))
    left_out = [f"pooling={'+'.join(enc.pooling_modes)}"]
    left_out += [type(m).__name__.strip("_") for m in enc.post]
    if chosen.has_projection:
        left_out.append(f"projection to {chosen.projection.out_features} dims")  # type: ignore[union-attr]
    return {
        "format": "hf",
        "output_dir": str(out),
        "tower": chosen.name,
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "not_in_folder": left_out,
        "note": "the transformer only; format=sentence_transformers keeps pooling and projection",
    }
