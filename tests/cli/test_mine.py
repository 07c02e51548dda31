"""contrastlab-mine: hard negatives mined with a bi-encoder checkpoint, equal to a brute-force reference, from a
JSONL of pairs and from a BEIR folder, in memory or memory-mapped; bad input as one line and exit status 2."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from writers import write_beir

from contrastlab.cli.mine import run_mine
from contrastlab.config import build
from contrastlab.config.checks import ConfigError
from contrastlab.data.beir import BeirDataModule
from contrastlab.data.text_pairs import TextPairsDataModule
from contrastlab.training.checkpoints import load_checkpoint

CONF = Path(build.CONF_DIR)
pytestmark = pytest.mark.usefixtures("one_thread")


def write_pairs(path: Path) -> Path:
    """24 pairs with distinct words (no two texts embed alike) and a 25th sharing row 0's query."""
    rows = [
        {"query": f"which q{i} topic{i % 4}", "positive": f"answer a{i} topic{i % 4} fact{i}", "negatives": [f"w{i}"]}
        for i in range(24)
    ]
    rows.append({"query": "which q0 topic0", "positive": "second answer s0 topic0", "negatives": []})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bi-encoder checkpoint at initialisation (vocabulary fitted on every text of the pairs file)."""
    tmp = tmp_path_factory.mktemp("mine")
    pairs = write_pairs(tmp / "pairs.jsonl")
    tiny = ["text_encoder.width=16", "text_encoder.depth=1", "text_encoder.heads=2", "objective.embed_dim=8"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=biencoder_text_pairs", "debug=fast", "callbacks=none", "logger=csv", *tiny]
            + [f"data.path={pairs}", f"data.val_path={pairs}", "task_name=mine", f"paths.output_dir={tmp}"],
        )
    torch.manual_seed(0)
    dm, model = build.build_datamodule(cfg), build.build_objective(cfg)
    model.prepare_text(dm)
    path = tmp / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    meta = {"objective": "biencoder", "config": OmegaConf.to_container(cfg, resolve=True)}
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "contrastlab": meta}, path)
    return path, pairs


def mine_cfg(ckpt_path: Path, **over: object):
    base = OmegaConf.load(CONF / "mine.yaml")
    base.pop("defaults")
    base.pop("hydra")
    base.data = None
    return OmegaConf.merge(base, {"ckpt_path": str(ckpt_path), "progress": False, **over})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_negatives_equal_a_brute_force_reference(ckpt, tmp_path):
    ckpt_path, pairs = ckpt
    window = {"rank_min": 2, "rank_max": 12, "margin": 0.02, "num_negatives": 3}
    out = tmp_path / "mined.jsonl"
    stats = run_mine(mine_cfg(ckpt_path, input=str(pairs), output=str(out), query_chunk=4, doc_chunk=7, **window))
    mined = read_jsonl(out)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    corpus = list(dict.fromkeys(t for r in rows for t in (r["positive"], *r["negatives"])))
    assert stats["pairs"] == 25 and stats["documents"] == len(corpus) == 49

    model = load_checkpoint(ckpt_path, device="cpu").model
    with torch.no_grad():
        docs = model.encode_document(corpus)
        queries = model.encode_query([r["query"] for r in rows])
    for r, got, q in zip(rows, mined, queries, strict=True):
        assert (got["query"], got["positive"]) == (r["query"], r["positive"]) and set(got) == {
            "query",
            "positive",
            "negatives",
        }
        sims = (docs @ q).tolist()
        pos_sim = sims[corpus.index(r["positive"])]
        positives = {x["positive"] for x in rows if x["query"] == r["query"]}
        ranking = sorted(range(len(corpus)), key=lambda j: -sims[j])
        want = []
        for rank, j in enumerate(ranking, 1):
            in_window = window["rank_min"] <= rank <= window["rank_max"] and corpus[j] not in positives
            if in_window and sims[j] < pos_sim - window["margin"] and len(want) < window["num_negatives"]:
                want.append(corpus[j])
        assert got["negatives"] == want
    assert mined[0]["negatives"] and "second answer s0 topic0" not in mined[0]["negatives"]
    assert "answer a0 topic0 fact0" not in mined[24]["negatives"]  # the other positive of the same query
    assert stats["negatives"] == sum(len(m["negatives"]) for m in mined)
    # the output trains as data=text_pairs (its negatives are read back)
    dm = TextPairsDataModule(path=str(out), val_path=str(out))
    dm.setup()
    assert [r["negatives"] for r in dm.train_rows] == [m["negatives"] for m in mined]

    # memory-mapped corpus embeddings: the same file, the temporary .npy removed; a kept one holds them
    mapped = tmp_path / "mapped.jsonl"
    run_mine(mine_cfg(ckpt_path, input=str(pairs), output=str(mapped), memmap_over=0, **window))
    assert read_jsonl(mapped) == mined and not list(tmp_path.glob("*.npy"))
    kept = tmp_path / "emb" / "corpus.npy"
    run_mine(mine_cfg(ckpt_path, input=str(pairs), output=str(mapped), embeddings_path=str(kept), **window))
    torch.testing.assert_close(torch.from_numpy(np.load(kept)), docs)


def test_beir_negatives_skip_positives_and_the_query_itself(ckpt, tmp_path):
    ckpt_path, _ = ckpt
    root = write_beir(tmp_path / "beir")
    out = tmp_path / "beir.jsonl"
    run_mine(mine_cfg(ckpt_path, input=str(root), output=str(out), num_negatives=None, rank_max=31, margin=-10.0))
    mined = read_jsonl(out)
    assert len(mined) == 16 and mined[1]["query_id"] == "q0" and mined[1]["positive_id"] == "d10"
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()}
    for m in mined:
        j = int(m["query_id"][1:])
        # margin -10 keeps everything in the window: all documents but the query's positives (and its own id)
        assert set(m["negative_ids"]) == set(corpus) - {f"d{j}", f"d{j + 10}", m["query_id"]}
        first = m["negative_ids"][0]
        assert m["negatives"][0] == f"{corpus[first]['title']} {corpus[first]['text']}".strip()
    # data=beir trains on them (data.train_pairs) and still evaluates against the folder's corpus
    dm = BeirDataModule(data_dir=str(root), train_pairs=str(out), num_negatives=2, batch_size=4, val_split="test")
    dm.setup()
    assert [r["negatives"] for r in dm.train_rows] == [m["negatives"] for m in mined]
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["query"]) == 4 and len(batch["negatives"]) == 8 and dm.val_query_ids == ["q8", "q9", "q11"]


def test_bad_input(ckpt, tmp_path):
    ckpt_path, pairs = ckpt
    with pytest.raises(ConfigError, match="input= is required"):
        run_mine(mine_cfg(ckpt_path))
    with pytest.raises(ConfigError, match=r"has no qrels/dev.tsv \(qrels there: test, train\); set split"):
        run_mine(mine_cfg(ckpt_path, input=str(write_beir(tmp_path / "b")), split="dev"))
    with pytest.raises(ConfigError, match="need 1 <= rank_min <= rank_max"):
        run_mine(mine_cfg(ckpt_path, input=str(pairs), output=str(tmp_path / "o.jsonl"), rank_min=9, rank_max=3))
    with pytest.raises(ConfigError, match="is the input file"):
        run_mine(mine_cfg(ckpt_path, input=str(pairs), output=str(pairs)))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError, match="set query_key / positive_key"):
        run_mine(mine_cfg(ckpt_path, input=str(tmp_path / "q.jsonl")))


@pytest.mark.slow
def test_command(ckpt, tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["contrastlab-mine"] == "contrastlab.cli.mine:main"
    ckpt_path, _ = ckpt
    root = write_beir(tmp_path / "beir")
    out = tmp_path / "out.jsonl"
    proc = run_cli(
        "mine", f"ckpt_path={ckpt_path}", f"input={root}", f"output={out}", "progress=false", tmp_path=tmp_path
    )
    assert "mined " in proc.stdout and str(out) in proc.stdout and len(read_jsonl(out)) == 16
    bad = run_cli("mine", f"ckpt_path={ckpt_path}", f"input={tmp_path / 'nope.jsonl'}", tmp_path=tmp_path, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: input={tmp_path / 'nope.jsonl'} does not exist; pass a "
                                               "JSONL of query/positive pairs or a BEIR folder."]  # fmt: skip
