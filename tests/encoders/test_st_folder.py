"""A sentence-transformers folder read by contrastlab's own reader embeds exactly as sentence-transformers does:
tiny random BERTs saved with sentence-transformers' own classes (mean / CLS / max pooling, with and without a
Dense module), an older-layout folder written by hand, a plain Hugging Face folder, and folders that are not
models. The pooling modes are checked against naive loops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from writers import write_tiny_bert, write_tiny_sentence_transformer

from contrastlab.encoders import st_folder
from contrastlab.encoders.text import HFTextEncoder, _pool
from contrastlab.errors import BadInputError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "how do I reverse a list in python",
    "a small red circle on the left",
    "return the sum of two numbers",
    # longer than max_seq_length=16 tokens: both sides must truncate alike
    "the quick brown fox jumps over the lazy dog and then the small red circle returns the sum of two lists",
    "ok",
]


def st_encode(folder: Path, texts: list[str], **kw) -> tuple[torch.Tensor, object]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", **kw)
    return torch.tensor(model.encode(texts, normalize_embeddings=True)), model


def ours(folder: Path | str, texts: list[str], **kw) -> tuple[torch.Tensor, HFTextEncoder]:
    tower = HFTextEncoder(str(folder), local_files_only=True, **kw).eval()
    with torch.no_grad():
        return F.normalize(tower.encode(texts), dim=1), tower


# --- pooling against naive loops ---------------------------------------------------------------------------


def naive_pool(h: torch.Tensor, m: torch.Tensor, mode: str) -> torch.Tensor:
    rows = []
    for b in range(h.shape[0]):
        idx = [t for t in range(h.shape[1]) if m[b, t] == 1]
        tokens = h[b, idx]
        if mode == "cls":
            rows.append(tokens[0])
        elif mode == "lasttoken":
            rows.append(tokens[-1])
        elif mode == "max":
            rows.append(tokens.max(0).values)
        elif mode == "mean":
            rows.append(tokens.sum(0) / len(idx))
        elif mode == "mean_sqrt_len_tokens":
            rows.append(tokens.sum(0) / len(idx) ** 0.5)
        else:  # weightedmean: weights 1, 2, ... from the first real token
            w = torch.tensor([t - idx[0] + 1 for t in idx], dtype=h.dtype)
            rows.append((tokens * w[:, None]).sum(0) / w.sum())
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_every_pooling_mode_matches_a_naive_loop(dtype, left):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 7, 5, generator=g, dtype=dtype)
    lengths = [7, 3, 1, 5]
    m = torch.zeros(4, 7, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            m[b, 7 - n :] = 1
        else:
            m[b, :n] = 1
    for mode in st_folder.POOLING_MODES:
        torch.testing.assert_close(_pool(h, m, mode), naive_pool(h, m, mode), msg=mode)
    both = _pool(h, m, ("cls", "mean"))  # several modes are concatenated in the order given
    torch.testing.assert_close(both, torch.cat([naive_pool(h, m, "cls"), naive_pool(h, m, "mean")], 1))


# --- folders saved by sentence-transformers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    made = {}
    for pooling in ("mean", "cls", "max"):
        for dense in (None, 8):
            name = f"{pooling}_{dense or 'nodense'}"
            made[(pooling, dense)] = write_tiny_sentence_transformer(
                root / name, TEXTS, pooling=pooling, dense=dense, normalize=dense is None, max_seq_length=16
            )
    return made


@pytest.mark.parametrize("dense", [None, 8], ids=["no-dense", "dense"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embeddings_equal_sentence_transformers_before_training(folders, pooling, dense):
    folder = folders[(pooling, dense)]
    want, st = st_encode(folder, TEXTS)
    got, tower = ours(folder, TEXTS)
    assert tower.max_length == st.max_seq_length == 16
    assert "[UNK]" not in tower.hf_tokenizer.tokenize("a small red circle")  # a real vocabulary, not all-unknown
    assert tower.pooling == pooling and tower.out_dim == (dense or 24)
    assert got.shape == want.shape
    assert (got * want).sum(1).min().item() >= 0.9999
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    layout = st_folder.read_layout(str(folder))
    kinds = [s if isinstance(s, str) else "dense" for s in layout.after_pooling]
    assert layout.sentence_transformers and kinds == (["dense"] if dense else ["normalize"])


def test_pooling_override(folders):
    _, tower = ours(folders[("mean", None)], TEXTS, pooling="cls")
    assert tower.pooling == "cls"
    with pytest.raises(BadInputError, match="text_encoder.pooling"):
        HFTextEncoder(str(folders[("mean", None)]), pooling="median")
    assert ours(folders[("max", None)], TEXTS[:1], pooling="mean")[1].out_dim == 24


def test_an_older_layout_written_by_hand(tmp_path):
    """The layout of hub models saved by sentence-transformers 2.x: ``sentence_transformers.models.*`` types,
    boolean pooling keys, ``max_seq_length`` and ``do_lower_case`` in sentence_bert_config.json."""
    folder = write_tiny_bert(tmp_path / "old", [t.lower() for t in TEXTS])
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    legacy = {"word_embedding_dimension": 24, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    (folder / "2_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8, "do_lower_case": True}))
    layout = st_folder.read_layout(str(folder))
    assert layout.pooling == ("cls",) and layout.max_seq_length == 8 and layout.do_lower_case
    texts = [t.upper() for t in TEXTS]  # lower-cased by do_lower_case on both sides
    want, st = st_encode(folder, texts)
    got, tower = ours(folder, texts)
    assert tower.max_length == st.max_seq_length == 8
    assert tower.prepare(["AbC"]) == ["abc"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_plain_hugging_face_folder_is_mean_pooled(tmp_path):
    folder = write_tiny_bert(tmp_path / "bert", TEXTS)
    assert st_folder.read_layout(str(folder)) == st_folder.Layout()
    got, tower = ours(folder, TEXTS)
    assert tower.pooling == "mean" and len(tower.post) == 0
    assert tower.max_length == 512  # the tokenizer sets no limit: the model's max_position_embeddings
    tokens = tower.tokenize(TEXTS)
    with torch.no_grad():
        hidden = tower.model(**tokens).last_hidden_state
    m = tokens["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(got, F.normalize((hidden * m).sum(1) / m.sum(1), dim=1))


def _one_line_error(fn) -> str:
    with pytest.raises(BadInputError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and "text_encoder." in msg
    return msg


def test_folders_that_are_not_models_name_the_key(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "text_encoder.name" in _one_line_error(lambda: HFTextEncoder(str(empty), local_files_only=True))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    _one_line_error(lambda: HFTextEncoder(str(junk), local_files_only=True))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"\0")
    assert "is a file" in _one_line_error(lambda: HFTextEncoder(str(a_file), local_files_only=True))
    odd = tmp_path / "odd"
    shutil.copytree(folders[("mean", None)], odd)
    modules = json.loads((odd / "modules.json").read_text())
    modules.insert(1, {"idx": 1, "name": "x", "path": "x", "type": "sentence_transformers.models.LSTM"})
    (odd / "modules.json").write_text(json.dumps(modules))
    assert "LSTM" in _one_line_error(lambda: HFTextEncoder(str(odd), local_files_only=True))
    bad_act = tmp_path / "bad_act"
    shutil.copytree(folders[("mean", 8)], bad_act)
    cfg_path = next(bad_act.glob("*_Dense")) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "activation_function": "os.system"}))
    assert "os.system" in _one_line_error(lambda: HFTextEncoder(str(bad_act), local_files_only=True))


def test_the_train_command_reports_a_non_model_in_one_line(tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    proc = run_cli(
        "train", "experiment=finetune_text", f"text_encoder.name={empty}", "logger=csv", "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"text_encoder.name={empty}" in lines[0] and "Traceback" not in proc.stderr


def test_a_hub_name_is_read_through_the_hub_cache(folders, monkeypatch):
    """A name that is not a local folder is looked up with ``huggingface_hub.hf_hub_download`` (here faked by a
    local folder: no network in tests); a file the repository lacks reads as absent."""
    import huggingface_hub

    folder = folders[("cls", 8)]
    asked = []

    def fake_download(repo_id, filename, revision=None, local_files_only=False):
        asked.append((repo_id, filename, revision, local_files_only))
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    layout = st_folder.read_layout("someone/tiny-model", revision="v1", local_files_only=True)
    assert layout.pooling == ("cls",) and [s.out_features for s in layout.after_pooling] == [8]
    assert ("someone/tiny-model", "modules.json", "v1", True) in asked
    dense = layout.after_pooling[0]
    state = st_folder.dense_state("someone/tiny-model", dense, "v1", True)
    assert state["linear.weight"].shape == (8, 24)
