"""Text towers. Each owns its tokenizer, so batches carry raw strings and any tower can be swapped in.

The interface the objectives use::

    tower.out_dim                         feature width
    tower.needs_fit                       True while an offline vocabulary is still to be built
    tower.fit_tokenizer(texts)            build it from the training texts (no-op for Hugging Face)
    tower.tokenize(texts) -> dict         {"input_ids": (B, L), "attention_mask": (B, L), ...} on CPU
    tower(**tokens) -> (B, out_dim)       pooled features (mean over real tokens, or the [CLS] token)
    tower.encode(texts, device)           the two steps above
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contrastlab.encoders.tokenizer import VocabTokenizer


def _pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, L, W) -> (B, W): ``cls`` takes position 0, ``mean`` averages the unmasked positions."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _check_pooling(pooling: str) -> None:
    if pooling not in ("mean", "cls"):
        raise ValueError(f"text_encoder.pooling must be 'mean' or 'cls', got '{pooling}'.")


class _TextTower(nn.Module):
    out_dim: int

    @property
    def needs_fit(self) -> bool:
        return False

    def fit_tokenizer(self, texts: Iterable[str]) -> None:
        """Build the vocabulary from training texts (towers with a fixed tokenizer ignore this)."""

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Raw strings -> (B, out_dim) features on ``device`` (default: the tower's)."""
        device = device or next(self.parameters()).device
        return self(**{k: v.to(device) for k, v in self.tokenize(list(texts)).items()})


class TransformerTextEncoder(_TextTower):
    """A small pre-norm Transformer encoder trained from scratch, with an offline tokenizer.

    ``[CLS] tokens [EOS]`` -> token + learned position embeddings (width ``W``) -> ``depth`` layers of
    multi-head self-attention (padding masked) and GELU MLPs -> LayerNorm -> pooled (B, W).

    The vocabulary (word or char level, at most ``vocab_size`` ids) is built from the training texts
    by :meth:`fit_tokenizer` and stored in the module's state dict (``get_extra_state``), so it travels
    with every checkpoint and a loaded model tokenizes exactly as it was trained.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        tokenizer: str = "word",
        max_length: int = 32,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pooling: str = "mean",
        lowercase: bool = True,
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        if width % heads:
            raise ValueError(f"text_encoder.width ({width}) must be divisible by text_encoder.heads ({heads}).")
        self.tokenizer = VocabTokenizer(tokenizer, vocab_size, max_length, lowercase)
        self.pooling, self.out_dim = pooling, width
        self.token_embedding = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, width))
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            int(width * mlp_ratio),
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        with torch.no_grad():
            self.token_embedding.weight[0].zero_()

    @property
    def needs_fit(self) -> bool:
        return not self.tokenizer.is_fitted

    def fit_tokenizer(self, texts: Iterable[str]) -> None:
        self.tokenizer.fit(texts)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return self.tokenizer(texts)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **_: Any) -> Tensor:
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        x = self.transformer(x, src_key_padding_mask=attention_mask == 0)
        return _pool(self.norm(x), attention_mask, self.pooling)

    # the vocabulary is part of the state dict, hence of every checkpoint
    def get_extra_state(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.tokenizer.load_state_dict(state["tokenizer"])


class HFTextEncoder(_TextTower):
    """Any Hugging Face ``transformers`` encoder by hub name or local directory (``AutoModel`` +
    ``AutoTokenizer``), pooled by the mean of the last hidden states over real tokens or by the first
    (``[CLS]``) token. Weights come from the hub (network) or a local path; ``local_files_only``
    never touches the network. The tokenizer is re-created from ``name`` when a checkpoint is loaded.
    """

    def __init__(
        self,
        name: str = "sentence-transformers/all-MiniLM-L6-v2",
        pooling: str = "mean",
        max_length: int = 64,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        _check_pooling(pooling)
        from transformers import AutoModel, AutoTokenizer

        kw: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision}
        try:
            self.model = AutoModel.from_pretrained(name, **kw)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(name, **kw)
        except OSError as err:
            raise OSError(
                f"could not load the Hugging Face model '{name}' ({err.__class__.__name__}); set "
                "text_encoder.name to a local directory saved with save_pretrained, or allow network access."
            ) from err
        self.name, self.pooling, self.max_length = name, pooling, max_length
        self.out_dim = int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self.hf_tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(out)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **kw: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return _pool(hidden, attention_mask, self.pooling)
