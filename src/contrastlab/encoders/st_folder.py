"""Read a sentence-transformers model folder (or hub repository) the way sentence-transformers reads it,
from its small JSON files; sentence-transformers itself is not needed.

A folder with ``modules.json`` lists its modules in order, e.g. all-MiniLM-L6-v2::

    idx  path          type          what it does
    0    ""            Transformer   the Hugging Face model and tokenizer (here: the folder root)
    1    1_Pooling     Pooling       token states (B, L, W) -> (B, W); 1_Pooling/config.json names the mode(s)
    2    2_Normalize   Normalize     x / ||x||

``Dense`` modules (``k_Dense/config.json`` + weights) map the pooled vector through ``act(W x + b)``.
``sentence_bert_config.json`` holds ``max_seq_length`` (and ``do_lower_case``); without it the tokenizer's
``model_max_length`` capped at the model's ``max_position_embeddings`` applies, as in sentence-transformers.
``config_sentence_transformers.json`` may name a default prompt that is put before every text.

A folder or hub name without ``modules.json`` is a plain Hugging Face model: mean pooling, nothing after.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastlab.errors import BadInputError

#: every pooling mode sentence-transformers' Pooling module knows, in its concatenation order
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: the boolean keys of older Pooling configs, one per mode (same order)
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


class ModelFolderError(BadInputError, OSError):
    """``text_encoder.name`` is not a model that can be read (the message names the key)."""


@dataclass(frozen=True)
class DenseSpec:
    """One ``Dense`` module: ``activation(W x + b)``, ``W`` (out_features, in_features)."""

    path: str
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.activation.Tanh"


@dataclass(frozen=True)
class Layout:
    """What a model folder declares. ``after_pooling``: the ``Dense`` (a :class:`DenseSpec`) and
    ``Normalize`` (the string ``"normalize"``) modules after pooling, in order."""

    transformer_path: str = ""
    pooling: tuple[str, ...] = ("mean",)
    after_pooling: tuple[DenseSpec | str, ...] = ()
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    sentence_transformers: bool = False

    @property
    def prompt(self) -> str:
        """The text put before every input (the default prompt), or ``""``."""
        return self.prompts.get(self.default_prompt_name or "", "")


class _Source:
    """Small files of a local folder or of a hub repository (looked up in the cache or downloaded)."""

    def __init__(self, name: str, revision: str | None, local_files_only: bool) -> None:
        self.name, self.revision, self.local_files_only = name, revision, local_files_only
        self.local = Path(name).expanduser()

    def path(self, rel: str) -> Path | None:
        if self.local.is_dir():
            p = self.local / rel
            return p if p.is_file() else None
        try:
            from huggingface_hub import hf_hub_download

            got = hf_hub_download(
                self.name, rel, revision=self.revision, local_files_only=self.local_files_only
            )  # fmt: skip
        except Exception:  # not on the hub, not cached, offline: the file is absent for our purposes
            return None
        return Path(got)

    def json(self, rel: str) -> dict[str, Any] | list[Any] | None:
        p = self.path(rel)
        if p is None:
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelFolderError(
                f"text_encoder.name={self.name}: {rel} is not valid JSON ({err.__class__.__name__}); "
                "point text_encoder.name at an intact sentence-transformers or Hugging Face model folder."
            ) from err


def _join(folder: str, name: str) -> str:
    """``folder/name`` inside a model folder (``folder`` may be ``""``: the root)."""
    return f"{folder.strip('/')}/{name}" if folder.strip("/") else name


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The pooling modes of a ``1_Pooling/config.json`` (new ``pooling_mode`` key or the older booleans)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(m for k, m in LEGACY_POOLING_KEYS.items() if config.get(k, False))
        return modes or ("mean",)
    return (mode,) if isinstance(mode, str) else tuple(mode)


def check_pooling(modes: tuple[str, ...], key: str = "text_encoder.pooling") -> tuple[str, ...]:
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ModelFolderError(f"{key} must be one of {', '.join(POOLING_MODES)}; got {bad[0] if bad else '[]'}.")
    return modes


def read_layout(name: str, revision: str | None = None, local_files_only: bool = False) -> Layout:
    """The :class:`Layout` of ``name`` (a folder or a hub repository id)."""
    src = _Source(name, revision, local_files_only)
    if src.local.exists() and not src.local.is_dir():
        raise ModelFolderError(
            f"text_encoder.name={name} is a file, not a model folder; set text_encoder.name to a folder saved with "
            "save_pretrained (or SentenceTransformer.save) or to a hub model name."
        )
    modules = src.json("modules.json")
    if modules is None:
        return Layout()
    if not isinstance(modules, list) or not modules:
        raise ModelFolderError(f"text_encoder.name={name}: modules.json lists no modules; pass a model folder.")
    transformer_path, pooling, after, pool_cfg = "", ("mean",), [], None
    for i, mod in enumerate(sorted(modules, key=lambda m: int(m.get("idx", 0)))):
        kind, path = str(mod.get("type", "")).rsplit(".", 1)[-1], str(mod.get("path", ""))
        if kind not in SUPPORTED_MODULES:
            raise ModelFolderError(
                f"text_encoder.name={name}: module '{mod.get('type')}' of modules.json is not supported "
                f"(only {', '.join(SUPPORTED_MODULES)}); set text_encoder.name to a model built from those."
            )
        if (kind == "Transformer") != (i == 0):
            raise ModelFolderError(
                f"text_encoder.name={name}: modules.json must start with its one Transformer module; "
                "set text_encoder.name to a text-embedding model folder."
            )
        if kind == "Transformer":
            transformer_path = path
        elif kind == "Pooling":
            pool_cfg = src.json(_join(path, "config.json")) or {}
            pooling = check_pooling(pooling_modes(pool_cfg))  # type: ignore[arg-type]
        elif kind == "Dense":
            cfg = src.json(_join(path, "config.json")) or {}
            after.append(
                DenseSpec(
                    path=path,
                    in_features=int(cfg["in_features"]),
                    out_features=int(cfg["out_features"]),
                    bias=bool(cfg.get("bias", True)),
                    activation=str(cfg.get("activation_function", DenseSpec.activation)),
                )
            )
        else:
            after.append("normalize")
        if kind in ("Dense", "Normalize") and pool_cfg is None:
            raise ModelFolderError(
                f"text_encoder.name={name}: a {kind} module comes before any Pooling module in modules.json; "
                "set text_encoder.name to a sentence-embedding model folder."
            )
    sbert = src.json(_join(transformer_path, "sentence_bert_config.json"))
    sbert = sbert if isinstance(sbert, dict) else {}
    st_cfg = src.json("config_sentence_transformers.json")
    st_cfg = st_cfg if isinstance(st_cfg, dict) else {}
    layout = Layout(
        transformer_path=transformer_path,
        pooling=pooling,
        after_pooling=tuple(after),
        max_seq_length=int(sbert["max_seq_length"]) if sbert.get("max_seq_length") else None,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        prompts={str(k): str(v) for k, v in (st_cfg.get("prompts") or {}).items()},
        default_prompt_name=st_cfg.get("default_prompt_name"),
        sentence_transformers=True,
    )
    if layout.prompt and not (pool_cfg or {}).get("include_prompt", True):
        raise ModelFolderError(
            f"text_encoder.name={name}: a default prompt left out of pooling (include_prompt=false) is not "
            "supported; set text_encoder.name to a model without a default prompt."
        )
    return layout


def activation(dotted: str, name: str) -> nn.Module:
    """A ``torch.nn`` activation module from its dotted class name (only torch's own, as sentence-transformers
    allows without ``trust_remote_code``)."""
    module_name, _, cls_name = dotted.rpartition(".")
    cls = None
    if dotted.startswith("torch."):
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelFolderError(
            f"text_encoder.name={name}: the Dense activation '{dotted}' is not a torch.nn module; "
            "set text_encoder.name to a model whose Dense layers use torch activations."
        )
    return cls()


def dense_state(name: str, spec: DenseSpec, revision: str | None, local_files_only: bool) -> dict[str, torch.Tensor]:
    """The weights of a ``Dense`` module (``linear.weight`` (out, in), ``linear.bias`` (out,))."""
    src = _Source(name, revision, local_files_only)
    st_file = src.path(_join(spec.path, "model.safetensors"))
    if st_file is not None:
        from safetensors.torch import load_file

        return load_file(str(st_file))
    bin_file = src.path(_join(spec.path, "pytorch_model.bin"))
    if bin_file is not None:
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise ModelFolderError(
        f"text_encoder.name={name}: the Dense module in {spec.path}/ has no weights (model.safetensors or "
        "pytorch_model.bin); point text_encoder.name at a complete model folder."
    )
