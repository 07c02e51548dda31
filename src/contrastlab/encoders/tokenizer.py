"""An offline word- or character-level tokenizer whose vocabulary is built from training texts.

Ids: 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]`` (prepended), 3 ``[EOS]`` (appended), then the vocabulary
sorted by descending frequency (ties alphabetically), so the same texts always give the same ids.
Its state is a plain dict (level, options, token list), stored with the model's checkpoint by the
text tower that owns it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from contrastlab.errors import check_choice

TokenizerLevel = Literal["word", "char"]

PAD, UNK, CLS, EOS = "[PAD]", "[UNK]", "[CLS]", "[EOS]"
SPECIALS = (PAD, UNK, CLS, EOS)
_WORD = re.compile(r"\w+|[^\w\s]")


class VocabTokenizer:
    """Args:
    level: ``word`` (regex words and punctuation) or ``char``.
    max_vocab: the most ids (specials included) the vocabulary may hold; rarer tokens map to ``[UNK]``.
    max_length: sequences are truncated to this many ids (``[CLS]`` and ``[EOS]`` included).
    lowercase: lower-case texts before splitting.
    min_count: tokens seen fewer times are left out of the vocabulary.
    """

    def __init__(
        self,
        level: TokenizerLevel = "word",
        max_vocab: int = 4096,
        max_length: int = 32,
        lowercase: bool = True,
        min_count: int = 1,
    ) -> None:
        check_choice(level, TokenizerLevel, "text_encoder.tokenizer")
        if max_vocab <= len(SPECIALS):
            raise ValueError(f"text_encoder.vocab_size must exceed {len(SPECIALS)}, got {max_vocab}.")
        if max_length < 3:
            raise ValueError(f"text_encoder.max_length must be at least 3, got {max_length}.")
        self.level, self.max_vocab, self.max_length = level, max_vocab, max_length
        self.lowercase, self.min_count = lowercase, min_count
        self.tokens: list[str] = []
        self.ids: dict[str, int] = {}

    # --- vocabulary -------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return bool(self.tokens)

    def split(self, text: str) -> list[str]:
        text = text.lower() if self.lowercase else text
        return _WORD.findall(text) if self.level == "word" else [c for c in text if not c.isspace() or c == " "]

    def fit(self, texts: Iterable[str]) -> VocabTokenizer:
        counts = Counter(tok for t in texts for tok in self.split(t))
        kept = [t for t, c in counts.items() if c >= self.min_count and t not in SPECIALS]
        kept.sort(key=lambda t: (-counts[t], t))
        self.tokens = list(SPECIALS) + kept[: self.max_vocab - len(SPECIALS)]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        return self

    # --- encoding ---------------------------------------------------------------------------------
    def encode_one(self, text: str) -> list[int]:
        if not self.is_fitted:
            raise RuntimeError("the tokenizer has no vocabulary yet: call fit(training texts) or load a checkpoint.")
        unk = self.ids[UNK]
        body = [self.ids.get(t, unk) for t in self.split(text)][: self.max_length - 2]
        return [self.ids[CLS], *body, self.ids[EOS]]

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """``texts`` -> ``input_ids`` (B, L) long and ``attention_mask`` (B, L) long (1 = token),
        padded with ``[PAD]`` to the longest sequence in the batch (L <= max_length)."""
        if isinstance(texts, str):
            texts = [texts]
        seqs = [self.encode_one(t) for t in texts]
        length = max((len(s) for s in seqs), default=2)
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int]) -> str:
        toks = [self.tokens[i] for i in ids if self.tokens[i] not in (PAD, CLS, EOS)]
        return ("" if self.level == "char" else " ").join(toks)

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "max_vocab": self.max_vocab,
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "min_count": self.min_count,
            "tokens": list(self.tokens),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("level", "max_vocab", "max_length", "lowercase", "min_count"):
            setattr(self, key, state[key])
        self.tokens = list(state["tokens"])
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        size = f"{len(self.tokens)}/{self.max_vocab}"
        return f"VocabTokenizer(level={self.level}, size={size}, max_length={self.max_length})"
