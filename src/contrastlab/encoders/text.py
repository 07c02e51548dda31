"""Text towers. Each owns its tokenizer, so batches carry raw strings and any tower can be swapped in.

The interface the objectives use::

    tower.out_dim                         feature width
    tower.needs_fit                       True while an offline vocabulary is still to be built
    tower.fit_tokenizer(texts)            build it from the training texts (no-op for Hugging Face)
    tower.tokenize(texts) -> dict         {"input_ids": (B, L), "attention_mask": (B, L), ...} on CPU
    tower(**tokens) -> (B, out_dim)       pooled features (mean over real tokens, [CLS], ...)
    tower.encode(texts, device)           the two steps above
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.encoders import st_folder
from contrastlab.encoders.tokenizer import TokenizerLevel, VocabTokenizer
from contrastlab.errors import check_choice


def _pool(hidden: Tensor, attention_mask: Tensor, pooling: str | Sequence[str]) -> Tensor:
    """(B, L, W) token states -> (B, W * len(modes)), the modes of sentence-transformers' Pooling concatenated.

    With ``m`` the attention mask (1 = real token) and ``n = sum_t m_t``: ``mean`` = sum_t m_t h_t / n,
    ``mean_sqrt_len_tokens`` = sum_t m_t h_t / sqrt(n), ``max`` = max over real tokens, ``cls`` = the first real
    token, ``lasttoken`` = the last real token, ``weightedmean`` = sum_t w_t h_t / sum_t w_t with
    ``w_t = m_t (t + 1 - first)`` (``first``: index of the first real token).
    """
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    mask = attention_mask.unsqueeze(-1).to(acc)
    first = attention_mask.to(torch.int32).argmax(1)  # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[rows, first])
        elif mode == "lasttoken":
            length = hidden.shape[1]
            seen, back = attention_mask.flip(1).to(torch.int32).max(1)
            out.append(hidden[rows, torch.where(seen == 0, 0, length - 1 - back)])
        elif mode == "max":
            out.append(hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, float("-inf")).max(1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total, count = (hidden.to(acc) * mask).sum(1), mask.sum(1).clamp_min(1e-9)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
        elif mode == "weightedmean":
            pos = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc).view(1, -1, 1)
            weights = mask * (pos - first.view(-1, 1, 1).to(acc))
            total = (hidden.to(acc) * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            out.append(total.to(hidden.dtype))
        else:
            raise ValueError(f"unknown pooling mode '{mode}'")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


Pooling = Literal["mean", "cls"]


def _check_pooling(pooling: str) -> None:
    check_choice(pooling, Pooling, "text_encoder.pooling")


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
        tokenizer: TokenizerLevel = "word",
        max_length: int = 32,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pooling: Pooling = "mean",
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


class _Dense(nn.Module):
    """A sentence-transformers ``Dense`` module: ``activation(W x + b)``, (B, in) -> (B, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: nn.Module) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.linear(x))


class _Normalize(nn.Module):
    """A sentence-transformers ``Normalize`` module: ``x / ||x||_2`` per row."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class HFTextEncoder(_TextTower):
    """Any Hugging Face ``transformers`` encoder by hub name or local directory, read as sentence-transformers
    reads it (:mod:`contrastlab.encoders.st_folder`): ``AutoModel`` + ``AutoTokenizer``, then the pooling the
    folder declares (mean, cls, max, ...), then its ``Dense`` / ``Normalize`` modules, in order. So before any
    training ``tower.encode(texts)`` is what ``SentenceTransformer(name).encode(texts)`` returns. A plain Hugging
    Face model (no ``modules.json``) is mean-pooled.

    Args:
        name: hub name or local folder. pooling: override the folder's pooling (one of
            :data:`~contrastlab.encoders.st_folder.POOLING_MODES`); None: the folder's (plain HF: mean).
        max_length: tokens per text; None: the folder's ``max_seq_length`` (else the tokenizer's
            ``model_max_length`` capped at the model's ``max_position_embeddings``).
        local_files_only: never touch the network. revision: a hub revision.

    Weights come from the hub (network) or a local path. The tokenizer and the layout are re-read from
    ``name`` when a checkpoint is loaded (the weights then come from the checkpoint).
    """

    def __init__(
        self,
        name: str = "sentence-transformers/all-MiniLM-L6-v2",
        pooling: str | None = None,
        max_length: int | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if not name or str(name) == "???":
            raise st_folder.ModelFolderError(
                "text_encoder.name is required: set it to a hub name (e.g. sentence-transformers/all-MiniLM-L6-v2) "
                "or to a local model folder."
            )
        self.layout = st_folder.read_layout(name, revision, local_files_only)
        kw: dict[str, Any] = {"local_files_only": local_files_only, "revision": revision}
        if self.layout.transformer_path:
            kw["subfolder"] = self.layout.transformer_path
        try:
            self.model = AutoModel.from_pretrained(name, **kw)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(name, **kw)
        except (OSError, ValueError, KeyError) as err:
            why = str(err).strip().splitlines()[0][:160] if str(err).strip() else err.__class__.__name__
            raise st_folder.ModelFolderError(
                f"could not load the Hugging Face model text_encoder.name={name} ({why}); set text_encoder.name to a "
                "folder saved with save_pretrained or SentenceTransformer.save, or to a hub name (with network access)."
            ) from err
        self.name, self.revision, self.local_files_only = name, revision, local_files_only
        modes = self.layout.pooling if pooling is None else st_folder.check_pooling((str(pooling),))
        self.pooling = modes[0] if len(modes) == 1 else modes
        self.max_length = int(max_length) if max_length else self._default_max_length()
        width = int(self.model.config.hidden_size) * len(modes)
        post: list[nn.Module] = []
        for step in self.layout.after_pooling:
            if isinstance(step, str):
                post.append(_Normalize())
                continue
            if step.in_features != width:
                raise st_folder.ModelFolderError(
                    f"text_encoder.name={name}: the Dense module in {step.path}/ takes {step.in_features} features but "
                    f"gets {width}; leave text_encoder.pooling=null to use the folder's own pooling."
                )
            dense = _Dense(step.in_features, step.out_features, step.bias, st_folder.activation(step.activation, name))
            dense.linear.load_state_dict(
                {
                    k.removeprefix("linear."): v
                    for k, v in st_folder.dense_state(name, step, revision, local_files_only).items()
                }
            )
            post.append(dense)
            width = step.out_features
        self.post = nn.Sequential(*post)
        self.out_dim = width

    def _default_max_length(self) -> int:
        if self.layout.max_seq_length:
            return self.layout.max_seq_length
        limit = int(getattr(self.hf_tokenizer, "model_max_length", 0) or 0)
        positions = int(getattr(self.model.config, "max_position_embeddings", -1) or -1)
        if positions > 0:
            limit = min(limit, positions) if limit > 0 else positions
        return limit if 0 < limit < 1_000_000 else 512

    @property
    def pooling_modes(self) -> tuple[str, ...]:
        return (self.pooling,) if isinstance(self.pooling, str) else tuple(self.pooling)

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """Texts as the folder says they are fed: the default prompt first, lower-cased if ``do_lower_case``."""
        prompt = self.layout.prompt
        out = [prompt + t for t in texts] if prompt else list(texts)
        return [t.lower() for t in out] if self.layout.do_lower_case else out

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self.hf_tokenizer(
            self.prepare(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(out)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **kw: Tensor) -> Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return self.post(_pool(hidden, attention_mask, self.pooling))
