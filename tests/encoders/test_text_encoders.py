"""Text towers: the offline tokenizer, the from-scratch Transformer, and a Hugging Face tower built
offline from a tiny random BertConfig saved to a temporary folder."""

from __future__ import annotations

import io

import pytest
import torch
from writers import write_tiny_bert

from contrastlab.encoders.text import HFTextEncoder, TransformerTextEncoder
from contrastlab.encoders.tokenizer import CLS, EOS, PAD, UNK, VocabTokenizer

TEXTS = ["two small red circles on the left", "a large blue square at the top", "a red square, small"]


def test_word_tokenizer_vocabulary_is_deterministic_and_ranked():
    tok = VocabTokenizer("word", max_vocab=100, max_length=16).fit(TEXTS)
    assert tok.tokens[:4] == [PAD, UNK, CLS, EOS]
    # "a" (2x), "red" (2x), "small" (2x), "square" (2x) first, alphabetically; then the singletons
    assert tok.tokens[4:8] == ["a", "red", "small", "square"]
    assert VocabTokenizer("word", 100, 16).fit(reversed(TEXTS)).tokens == tok.tokens
    out = tok(["a red square", "a green square on the moon"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist()[:5] == [2, tok.ids["a"], tok.ids["red"], tok.ids["square"], 3]
    assert ids[0, 5:].tolist() == [0, 0, 0] and mask[0].tolist() == [1] * 5 + [0] * 3
    assert ids[1, 2].item() == tok.ids[UNK]  # "green" was never seen
    assert tok.decode(ids[0].tolist()) == "a red square"


def test_tokenizer_limits_and_char_level():
    tok = VocabTokenizer("word", max_vocab=6, max_length=4).fit(TEXTS)
    assert len(tok) == 6  # 4 specials + the 2 most frequent words
    ids = tok(["a red square small"])["input_ids"][0].tolist()
    assert len(ids) == 4 and ids[0] == 2 and ids[-1] == 3  # truncated to max_length, [EOS] kept
    char = VocabTokenizer("char", max_vocab=64, max_length=40).fit(TEXTS)
    assert "r" in char.ids and " " in char.ids
    assert char.decode(char(["a red"])["input_ids"][0].tolist()) == "a red"
    with pytest.raises(RuntimeError, match="vocabulary"):
        VocabTokenizer()(["x"])
    with pytest.raises(ValueError, match="text_encoder.tokenizer"):
        VocabTokenizer("bpe")


def _tower(**kw) -> TransformerTextEncoder:
    torch.manual_seed(0)
    tower = TransformerTextEncoder(vocab_size=64, max_length=16, width=32, depth=2, heads=4, **kw)
    tower.fit_tokenizer(TEXTS)
    return tower.eval()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformer_ignores_padding(pooling):
    tower = _tower(pooling=pooling)
    with torch.no_grad():
        alone = tower.encode(["a red square"])
        batched = tower.encode(["a red square", "two small red circles on the left at the top"])
    assert alone.shape == (1, 32)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_transformer_vocabulary_travels_in_the_state_dict():
    tower = _tower()
    state = tower.state_dict()
    assert state["_extra_state"]["tokenizer"]["tokens"] == tower.tokenizer.tokens
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = TransformerTextEncoder(vocab_size=64, max_length=16, width=32, depth=2, heads=4).eval()
    assert fresh.needs_fit
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert not fresh.needs_fit and fresh.tokenizer.tokens == tower.tokenizer.tokens
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(TEXTS), tower.encode(TEXTS))


def test_transformer_gradients_reach_embeddings():
    tower = _tower().train()
    tower.encode(TEXTS).pow(2).sum().backward()
    assert tower.token_embedding.weight.grad.abs().sum() > 0
    assert tower.token_embedding.weight.grad[0].abs().sum() == 0  # [PAD] never contributes


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 1-layer BERT and a WordPiece tokenizer, saved offline."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), TEXTS)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_tower_from_local_folder(tiny_bert, pooling):
    tower = HFTextEncoder(name=str(tiny_bert), pooling=pooling, max_length=16, local_files_only=True).eval()
    assert tower.out_dim == 24 and not tower.needs_fit
    tokens = tower.tokenize(TEXTS)
    with torch.no_grad():
        out = tower(**tokens)
        hidden = tower.model(**tokens).last_hidden_state
    assert out.shape == (3, 24)
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(out, expected)
    with torch.no_grad():  # padding does not change a text's embedding
        torch.testing.assert_close(tower.encode(TEXTS[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


def test_hf_tower_missing_model_names_the_key(tmp_path):
    with pytest.raises(OSError, match="text_encoder.name"):
        HFTextEncoder(name=str(tmp_path / "nowhere"), local_files_only=True)
