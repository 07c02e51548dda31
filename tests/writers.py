"""Test-data writers shared by several test files: small files in the real formats (CIFAR-10 batches, an
image folder, a caption table, a tiny BERT saved as a sentence-transformers/HF folder)."""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_FOLDER_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}
CAPTION_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230)}
CAPTION_SHAPES = ("square", "circle")


def _images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8, HWC as torchvision returns them."""
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _class_images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: each image its class's colour (10 colours around the hue circle) plus
    uniform noise of +-40, so that a kNN on any sensible features beats chance by far (a test can then
    assert more than ``0 <= accuracy <= 1``)."""
    hue = labels.astype(np.float64) / 10 * 2 * np.pi
    colour = 128 + 100 * np.stack([np.cos(hue), np.cos(hue - 2.1), np.cos(hue + 2.1)], axis=1)  # (n, 3)
    noise = rng.integers(-40, 41, size=(len(labels), size, size, 3))
    return np.clip(colour[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """(n,) labels in a random order with every class as often as ``n`` allows."""
    return rng.permutation(np.arange(n) % classes)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_batch(images: np.ndarray, labels: list[int], label_key: str, name: str) -> dict:
    # rows: 1024 red, 1024 green, 1024 blue values, each plane row-major
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)
    filenames = [f"{i}.png" for i in range(len(images))]
    return {"batch_label": name, label_key: labels, "data": data, "filenames": filenames}


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` of class-coloured images (see
    :func:`_class_images`); returns images and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_y = _balanced_labels(rng, 5 * per_batch, 10)
    train_x = _class_images(rng, train_y, 32)
    for k in range(5):
        sl = slice(k * per_batch, (k + 1) * per_batch)
        batch = _cifar_batch(train_x[sl], train_y[sl].tolist(), "labels", f"training batch {k + 1} of 5")
        _pickle(folder / f"data_batch_{k + 1}", batch)
    test_y = _balanced_labels(rng, n_test, 10)
    test_x = _class_images(rng, test_y, 32)
    _pickle(folder / "test_batch", _cifar_batch(test_x, test_y.tolist(), "labels", "testing batch 1 of 1"))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_image_folder(
    root: Path, classes: dict[str, int] | None = None, flat: int = 0, corrupt: tuple[str, ...] = ()
) -> Path:
    """Solid-colour images of varied sizes and formats: ``classes`` = {name: count} sub-folders, or
    ``flat`` images directly in ``root``; ``corrupt`` = relative paths of files with broken contents."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(40, 30), (24, 50), (33, 33)]
    for name, count in (classes or {}).items():
        (root / name).mkdir(exist_ok=True)
        for i in range(count):
            ext = ("png", "jpg", "bmp")[i % 3]
            Image.new("RGB", sizes[i % 3], IMAGE_FOLDER_COLOURS[name]).save(root / name / f"{i:03d}.{ext}")
    for i in range(flat):
        colour = (10 * (i % 25), 128, 255 - 10 * (i % 25))
        Image.new("RGB", sizes[i % 3], colour).save(root / f"img{i:03d}.png")
    for rel in corrupt:
        path = root / rel
        if path.suffix == ".png":  # a real PNG cut in half: the header parses, decoding fails
            Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
            path.write_bytes(path.read_bytes()[:60])
        else:
            path.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    return root


def write_image_text_csv(root: Path, n_images: int = 36, labelled: bool = False) -> Path:
    """PNG files of coloured shapes and a CSV with 1–3 captions per image (one row per caption)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        colour, shape = list(CAPTION_COLOURS)[i % 3], CAPTION_SHAPES[(i // 3) % 2]
        img = Image.new("RGB", (40, 30), (90, 90, 90))
        box = (8 + i % 5, 6, 28 + i % 5, 26)
        draw = ImageDraw.Draw(img)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=CAPTION_COLOURS[colour])
        name = f"images/{i:03d}.png"
        img.save(root / name)
        caps = [f"a {colour} {shape}, picture {i}", f"picture {i}: a {shape} in {colour}", f"one {colour} {shape}"]
        caps = caps[: 1 + i % 3]
        rows += [{"filepath": name, "caption": c, "shape": shape} for c in caps]
    path = root / "captions.csv"
    with open(path, "w", newline="") as fh:
        fields = ["filepath", "caption"] + (["shape"] if labelled else [])
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_tiny_bert(root: Path, texts: list[str], hidden: int = 24, intermediate: int = 32) -> Path:
    """A randomly initialised (seed 0) 1-layer BERT and a WordPiece vocabulary of ``texts``' words, saved
    into ``root`` the way a hub download is laid out."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # the vocabulary file is positional: transformers 5 ignores vocab_file= (every word would map to [UNK])
    BertTokenizerFast(str(root / "vocab.txt"), do_lower_case=True).save_pretrained(root)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=intermediate,
    )
    BertModel(config).save_pretrained(root)
    return root


def write_tiny_sentence_transformer(
    root: Path,
    texts: list[str],
    pooling: str = "mean",
    dense: int | None = None,
    normalize: bool = True,
    max_seq_length: int = 16,
) -> Path:
    """A tiny random BERT (:func:`write_tiny_bert`) built into a sentence-transformers model with
    sentence-transformers' own classes (Transformer -> Pooling(``pooling``) -> [Dense(``dense``, tanh)] ->
    [Normalize]) and saved with ``SentenceTransformer.save`` into ``root``: a folder laid out as the hub's."""
    try:  # sentence-transformers >= 5.4 moved the modules; the old path still imports, with a warning
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    bert = write_tiny_bert(root.parent / f"{root.name}_bert", texts)
    wordpiece_tokenizer(bert / "vocab.txt").save_pretrained(bert)  # a vocabulary that is really read (see below)
    transformer = Transformer(str(bert), max_seq_length=max_seq_length)
    pool = Pooling(transformer.auto_model.config.hidden_size, pooling_mode=pooling)
    modules = [transformer, pool]
    if dense is not None:
        torch.manual_seed(1)
        modules.append(Dense(pool.pooling_output_dimension, dense))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(root))
    return root


def write_beir(root: Path, dev: bool = False) -> Path:
    """A tiny retrieval dataset in the BEIR layout: 30 documents ``d0..d29`` (plus ``q3``, a document with a query's
    id), queries ``q0..q11``; ``qrels/train.tsv``: ``q0..q7`` -> ``d{j}`` and ``d{j+10}`` (grade 1);
    ``qrels/test.tsv``: graded judgments of ``q8..q11`` (``q10`` has only a grade-0 one); ``dev``: also
    ``qrels/dev.tsv`` (``q9`` -> ``d19``)."""
    import json

    (root / "qrels").mkdir(parents=True, exist_ok=True)
    docs = [{"_id": f"d{i}", "title": f"topic{i % 6}", "text": f"doc{i} alpha{i % 5} beta{i % 7}"} for i in range(30)]
    docs.append({"_id": "q3", "title": "", "text": "question3 itself"})
    queries = [{"_id": f"q{j}", "text": f"question{j} on alpha{j % 5} beta{j % 7}"} for j in range(12)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    train = [(f"q{j}", f"d{d}", 1) for j in range(8) for d in (j, j + 10)]
    test = [("q8", "d8", 2), ("q8", "d20", 1), ("q9", "d9", 1), ("q10", "d10", 0), ("q11", "d11", 1), ("q11", "d5", 0)]
    splits = {"train": train, "test": test} | ({"dev": [("q9", "d19", 1)]} if dev else {})
    for name, rows in splits.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in rows]
        (root / "qrels" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root


TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_open_clip(root: Path, name: str = "TinyTestCLIP", seed: int = 0) -> tuple[Path, Path]:
    """A tiny open_clip architecture (2-block ViT of 16x16 patches on 32x32 images, 2-block text transformer,
    32-dim space) as a model-config JSON ``<name>.json`` (what ``encoder.model`` takes) and its random weights
    ``<name>.pt`` (a state dict: what ``encoder.pretrained`` takes); returns ``(config, weights)``."""
    import json

    import open_clip

    root.mkdir(parents=True, exist_ok=True)
    config, weights = root / f"{name}.json", root / f"{name}.pt"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(name).state_dict(), weights)
    return config, weights


def wordpiece_tokenizer(vocab_path: Path):
    """A lower-casing BERT WordPiece tokenizer of ``vocab_path`` (one token a line). transformers 5 renamed the
    argument ``vocab_file`` to ``vocab`` and ignores the old name (leaving a tokenizer of the 5 special tokens that
    maps every word to ``[UNK]``); passed positionally, every version reads it."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(str(vocab_path), do_lower_case=True)


SHARD_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))


def write_image_shards(
    root: Path,
    name: str = "train",
    n: int = 48,
    classes: int = 3,
    per_shard: int = 10,
    size: int = 20,
    captions: bool = False,
    labels: bool = True,
    seed: int = 0,
) -> list[Path]:
    """``root/<name>-000000.tar, ...`` (``per_shard`` samples each, ``sizes.json``, ``classes.json``): sample ``i`` is
    a PNG of class ``i % classes``' colour with a little noise, ``key.cls`` (``labels``) and a caption naming the
    colour (``captions``: ``key.txt`` and a list of two in ``key.json``). Written with contrastlab's ShardWriter."""
    import io

    from contrastlab.data.shard_writer import ShardWriter, sample_members, write_classes

    names = ["red", "green", "blue", "yellow"][:classes]
    rng = np.random.default_rng(seed)
    with ShardWriter(root, name, max_count=per_shard) as writer:
        for i in range(n):
            c = i % classes
            pixels = np.clip(np.array(SHARD_COLOURS[c]) + rng.integers(-25, 26, (size, size, 3)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
            caps = [f"a {names[c]} square number {i}", f"{names[c]} picture {i}"] if captions else []
            members = sample_members(("png", buf.getvalue()), c if labels else None, names[c], caps)
            writer.write(f"{name}{i:06d}", members)
    if labels:
        write_classes(root, names)
    return [p for p, _ in writer.written]
