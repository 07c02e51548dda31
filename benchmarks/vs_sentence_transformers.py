"""Fine-tuning a text-embedding model: sentence-transformers' own ``fit`` (MultipleNegativesRankingLoss) against
contrastlab's ``experiment=finetune_text``, on the same pairs, in one process, at equal epochs, batch size,
learning rate, warm-up and maximum sequence length.

    python benchmarks/vs_sentence_transformers.py --toy                      # seconds, offline: a tiny random model
    python benchmarks/vs_sentence_transformers.py --model sentence-transformers/all-MiniLM-L6-v2 --pairs train.jsonl
    python benchmarks/vs_sentence_transformers.py --model /models/all-MiniLM-L6-v2 --pairs stdlib   # code search

``--pairs`` is a JSONL of ``{"query", "positive"[, "negatives": [...]]}`` (``stdlib``: about 3,000 code-search
pairs built here from the Python standard library: a function's docstring summary -> its source without the
docstring, another function of the same module as the hard negative). A held-out part (``--eval-fraction``, or
``--eval-pairs``) is the retrieval test: every held-out query against all held-out documents (positives and
negatives, each text once); one relevant document per query. Both sides train on the same training rows with one
hard negative per row when every row has one, batches without repeated texts, AdamW (weight decay 0.01), linear
warm-up over 10 % of the steps then linear decay, gradient norm clipped at 1, scale 20 (temperature 0.05).
The one difference kept on purpose: contrastlab's loss is the symmetric one (query->documents and
document->queries), MultipleNegativesRankingLoss only the first.

Printed: recall@1, MRR@10 and nDCG@10 of the pretrained model and of each fine-tuned one, the wall time of each
run (model load + training; contrastlab's also writes its checkpoint), and contrastlab / sentence-transformers
ratios (the goal: quality >= 1, time <= 1.1).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import json
import math
import os
import random
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STDLIB_MODULES = [
    "argparse",
    "ast",
    "asyncio.base_events",
    "asyncio.events",
    "asyncio.locks",
    "asyncio.queues",
    "asyncio.selector_events",
    "asyncio.sslproto",
    "asyncio.streams",
    "asyncio.tasks",
    "asyncio.unix_events",
    "base64",
    "bdb",
    "bisect",
    "calendar",
    "cgi",
    "chunk",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "colorsys",
    "compileall",
    "concurrent.futures._base",
    "concurrent.futures.process",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "dbm",
    "decimal",
    "difflib",
    "dis",
    "email._header_value_parser",
    "email.charset",
    "email.feedparser",
    "email.generator",
    "email.header",
    "email.message",
    "email.utils",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "http.cookies",
    "http.server",
    "imaplib",
    "imghdr",
    "importlib.metadata",
    "importlib.resources._common",
    "inspect",
    "ipaddress",
    "json.decoder",
    "json.encoder",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mailcap",
    "mimetypes",
    "modulefinder",
    "multiprocessing.connection",
    "multiprocessing.managers",
    "multiprocessing.pool",
    "netrc",
    "nntplib",
    "ntpath",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pipes",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posixpath",
    "pprint",
    "py_compile",
    "pyclbr",
    "pydoc",
    "queue",
    "quopri",
    "random",
    "re",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "sndhdr",
    "socket",
    "socketserver",
    "sqlite3.dump",
    "ssl",
    "stat",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sysconfig",
    "tabnanny",
    "tarfile",
    "telnetlib",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "tomllib._parser",
    "trace",
    "traceback",
    "turtle",
    "typing",
    "unittest.case",
    "unittest.mock",
    "urllib.parse",
    "urllib.request",
    "uu",
    "uuid",
    "wave",
    "weakref",
    "wsgiref.handlers",
    "wsgiref.simple_server",
    "wsgiref.util",
    "xdrlib",
    "xml.dom.minidom",
    "xml.dom.pulldom",
    "xml.etree.ElementTree",
    "xml.sax.expatreader",
    "xml.sax.saxutils",
    "zipapp",
    "zipfile",
    "zipimport",
    "zoneinfo._zoneinfo",
]


# --- data ------------------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            negs = raw.get("negatives", raw.get("negative", []))
            negs = [negs] if isinstance(negs, str) else list(negs)
            rows.append({"query": str(raw["query"]), "positive": str(raw["positive"]), "negatives": negs})
    return rows


def _without_docstring(source: str) -> str | None:
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return None
    fn = tree.body[0] if tree.body else None
    if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant):
        fn.body = fn.body[1:] or [ast.Pass()]
    return ast.unparse(fn)


def stdlib_pairs(limit: int = 3000, seed: int = 0) -> list[dict[str, Any]]:
    """Code-search pairs from the standard library's functions and methods: the docstring's first sentence ->
    the source without its docstring; the hard negative is another function of the same module (of another
    module when it has just one)."""
    by_module: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for name in STDLIB_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(name)
            except Exception:  # not on this platform
                continue
        members = []
        for _, obj in inspect.getmembers(module):
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == module.__name__:
                members += [m for _, m in inspect.getmembers(obj, inspect.isfunction)]
            elif inspect.isfunction(obj) and obj.__module__ == module.__name__:
                members.append(obj)
        for fn in members:
            doc = inspect.getdoc(fn)
            if not doc or fn.__module__ != module.__name__:
                continue
            summary = " ".join(doc.strip().split("\n\n")[0].split())
            summary = summary.split(". ")[0].rstrip(".")
            if not 15 <= len(summary) <= 200 or summary.lower() in seen:
                continue
            try:
                code = _without_docstring(inspect.getsource(fn))
            except (OSError, TypeError):
                continue
            if code is None or not 60 <= len(code) <= 3000:
                continue
            seen.add(summary.lower())
            by_module.setdefault(name, []).append((summary, code))
    rng = random.Random(seed)
    everything = [c for pairs in by_module.values() for _, c in pairs]
    rows = []
    for pairs in by_module.values():
        for i, (summary, code) in enumerate(pairs):
            others = [c for j, (_, c) in enumerate(pairs) if j != i]  # same module: the hard negative
            negative = rng.choice(others) if others else rng.choice([c for c in everything if c != code])
            rows.append({"query": summary, "positive": code, "negatives": [negative]})
    rng.shuffle(rows)
    return rows[:limit]


TOY_THINGS = ["cat", "dog", "owl", "fox", "bee", "ant", "cow", "pig", "hen", "elk", "yak", "eel"]
TOY_COLOURS = ["red", "green", "blue", "black", "white", "brown", "pink", "grey"]
TOY_SIZES = ["big", "small", "old"]
TOY_PLACES = ["kitchen", "garden", "roof", "river", "forest", "desert", "harbour", "market"]


def toy_pairs(seed: int = 0) -> list[dict[str, Any]]:
    """Paraphrase-like toy pairs, one per (size, colour, thing): "where is the big red cat" -> "a big red cat sits
    in the kitchen", with another animal in another place as the hard negative (288 pairs)."""
    rng = random.Random(seed)
    rows = []
    for size in TOY_SIZES:
        for colour in TOY_COLOURS:
            for thing in TOY_THINGS:
                place = rng.choice(TOY_PLACES)
                other = rng.choice([p for p in TOY_PLACES if p != place])
                rows.append(
                    {
                        "query": f"where is the {size} {colour} {thing}",
                        "positive": f"a {size} {colour} {thing} sits in the {place}",
                        "negatives": [
                            f"a {rng.choice(TOY_SIZES)} {colour} {rng.choice(TOY_THINGS)} sits in the {other}"
                        ],
                    }
                )
    rng.shuffle(rows)
    return rows


def write_toy_model(folder: Path, texts: list[str]) -> Path:
    """A tiny random BERT (2 layers, width 32) with a word-level vocabulary of ``texts``, saved as a
    sentence-transformers folder (mean pooling, Normalize) with sentence-transformers' own classes."""
    import re

    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    bert = folder.parent / f"{folder.name}_bert"
    bert.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # positional: transformers 5 names it ``vocab`` (and ignores ``vocab_file=``), 4.x ``vocab_file``
    BertTokenizerFast(str(bert / "vocab.txt"), do_lower_case=True).save_pretrained(bert)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(bert)
    transformer = Transformer(str(bert), max_seq_length=32)
    modules = [transformer, Pooling(32, pooling_mode="mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


# --- retrieval metrics (one relevant document per query) ----------------------------------------------------


def ir_metrics(q: np.ndarray, d: np.ndarray, relevant: np.ndarray, k: int = 10) -> dict[str, float]:
    """``q`` (Q, D), ``d`` (N, D) L2-normalised, ``relevant`` (Q,) the index of each query's one relevant document.

    With ``r`` the 1-based rank of the relevant document by cosine (ties ranked pessimistically: every document
    scoring at least as high counts): recall@1 = mean[r = 1], MRR@k = mean[1/r if r <= k else 0],
    nDCG@k = mean[1/log2(r + 1) if r <= k else 0] (the ideal DCG of one relevant document is 1)."""
    scores = q @ d.T
    target = scores[np.arange(len(q)), relevant]
    rank = (scores >= target[:, None]).sum(1)  # 1-based, pessimistic
    hit = rank <= k
    return {
        "recall@1": float((rank == 1).mean()),
        f"mrr@{k}": float(np.where(hit, 1.0 / rank, 0.0).mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(rank + 1), 0.0).mean()),
    }


def eval_set(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], np.ndarray]:
    """Queries, the corpus (positives and negatives, each text once) and each query's relevant index."""
    corpus: dict[str, int] = {}
    for r in rows:
        for t in (r["positive"], *r["negatives"]):
            corpus.setdefault(t, len(corpus))
    return [r["query"] for r in rows], list(corpus), np.array([corpus[r["positive"]] for r in rows])


def score(encode_q: Any, encode_d: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    queries, docs, relevant = eval_set(rows)
    return ir_metrics(encode_q(queries), encode_d(docs), relevant)


# --- the two runs ---------------------------------------------------------------------------------------------


def st_encoder(model: Any, batch_size: int = 64):
    return lambda texts: model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)


def run_sentence_transformers(model_name: str, train: list[dict[str, Any]], args: argparse.Namespace, work: Path):
    from sentence_transformers import InputExample, SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.datasets import NoDuplicatesDataLoader
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.datasets import NoDuplicatesDataLoader
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    start = time.perf_counter()
    model = SentenceTransformer(model_name, device="cpu")
    model.max_seq_length = args.max_seq_length
    examples = [InputExample(texts=[r["query"], r["positive"], *r["negatives"][: args.negatives]]) for r in train]
    loader = NoDuplicatesDataLoader(examples, batch_size=args.batch_size)
    steps = len(loader) * args.epochs
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    cwd = os.getcwd()
    os.chdir(work)  # fit() makes a checkpoints/ folder in the working directory
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model.fit(
                train_objectives=[(loader, loss)], epochs=args.epochs, warmup_steps=int(round(0.1 * steps)),
                optimizer_params={"lr": args.lr}, weight_decay=0.01, max_grad_norm=1.0, show_progress_bar=False,
            )  # fmt: skip
    finally:
        os.chdir(cwd)
    return model, time.perf_counter() - start, steps


def run_contrastlab(model_name: str, train_path: Path, val_path: Path, args: argparse.Namespace, work: Path):
    from contrastlab import api
    from contrastlab.training.checkpoints import load_checkpoint

    overrides = [
        "experiment=finetune_text",
        f"text_encoder.name={model_name}",
        f"text_encoder.max_length={args.max_seq_length}",
        f"data.path={train_path}",
        f"data.val_path={val_path}",
        f"data.batch_size={args.batch_size}",
        f"data.num_negatives={args.negatives}",
        f"optimizer.lr={args.lr}",
        f"trainer.max_epochs={args.epochs}",
        "++trainer.limit_val_batches=0",  # no validation during training (sentence-transformers runs none either)
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=csv",
        "print_config=false",
        f"seed={args.seed}",
    ]
    if args.grad_cache:
        overrides.append(f"objective.grad_cache.micro_batch_size={args.grad_cache}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        metrics = api.train(overrides, work / "contrastlab")
    seconds = time.perf_counter() - start
    ckpt = load_checkpoint(work / "contrastlab" / "checkpoints" / "last.ckpt", device="cpu")
    return ckpt.model, seconds, int(metrics.get("trainer/global_step", 0))


def batched(fn: Any, size: int = 64):
    @torch.no_grad()
    def encode(texts: list[str]) -> np.ndarray:
        return torch.cat([fn(texts[i : i + size]).float().cpu() for i in range(0, len(texts), size)]).numpy()

    return encode


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--toy", action="store_true", help="a tiny random model and toy pairs written here (offline)")
    p.add_argument("--model", help="a sentence-transformers folder or hub name")
    p.add_argument("--pairs", help="training JSONL, or 'stdlib' for code-search pairs from the standard library")
    p.add_argument("--eval-pairs", help="held-out JSONL (default: --eval-fraction of --pairs)")
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=3000, help="most pairs used from --pairs")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--negatives", type=int, default=None, help="hard negatives per row (default: 1 if all have one)")
    p.add_argument("--grad-cache", type=int, default=0, help="contrastlab GradCache micro-batch (0: off)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="where the runs write (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vs_st_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.toy:
        rows = toy_pairs()
        texts = [t for r in rows for t in (r["query"], r["positive"], *r["negatives"])]
        model_name = str(write_toy_model(work / "toy_model", texts))
        if args.lr == 2e-5:
            args.lr = 2e-3  # a random tiny model needs a larger step to move in a few steps
        args.epochs = max(args.epochs, 2)
        args.batch_size, args.max_seq_length = min(args.batch_size, 16), 32
    else:
        if not args.model or not args.pairs:
            p.error("give --toy, or --model and --pairs")
        model_name = args.model
        rows = stdlib_pairs(args.limit, args.seed) if args.pairs == "stdlib" else read_pairs(Path(args.pairs))
        rows = rows[: args.limit]
    if args.eval_pairs:
        train, held = rows, read_pairs(Path(args.eval_pairs))
    else:
        rng = random.Random(args.seed)
        order = list(range(len(rows)))
        rng.shuffle(order)
        n_eval = max(1, int(round(args.eval_fraction * len(rows))))
        held, train = [rows[i] for i in order[:n_eval]], [rows[i] for i in order[n_eval:]]
    if args.negatives is None:
        args.negatives = 1 if all(r["negatives"] for r in train) else 0
    train_path, val_path = work / "train.jsonl", work / "eval.jsonl"
    for path, part in ((train_path, train), (val_path, held)):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")

    from sentence_transformers import SentenceTransformer

    from contrastlab.encoders.text import HFTextEncoder

    pretrained = SentenceTransformer(model_name, device="cpu")
    pretrained.max_seq_length = args.max_seq_length
    base = score(st_encoder(pretrained), st_encoder(pretrained), held)
    ours0 = HFTextEncoder(model_name, max_length=args.max_seq_length).eval()
    probe = [r["query"] for r in held[:8]] + [r["positive"] for r in held[:8]]
    with torch.no_grad():
        ours_start = torch.nn.functional.normalize(ours0.encode(probe), dim=1).numpy()
    start_gap = float(np.abs(ours_start - st_encoder(pretrained)(probe)).max())  # the lossless start
    del pretrained, ours0

    st_model, st_seconds, st_steps = run_sentence_transformers(model_name, train, args, work)
    st_scores = score(st_encoder(st_model), st_encoder(st_model), held)
    del st_model
    cl_model, cl_seconds, cl_steps = run_contrastlab(model_name, train_path, val_path, args, work)
    cl_scores = score(batched(cl_model.encode_query), batched(cl_model.encode_document), held)

    keys = list(base)
    print(f"model {model_name}; {len(train)} training pairs ({args.negatives} hard negative(s) each), {len(held)} "
          f"held-out queries against {len(eval_set(held)[1])} documents")  # fmt: skip
    print(f"epochs {args.epochs}, batch {args.batch_size}, lr {args.lr:g}, max_seq_length {args.max_seq_length}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"optimizer steps: sentence-transformers {st_steps}, contrastlab {cl_steps}")
    print(f"pretrained embeddings: contrastlab vs sentence-transformers max abs difference {start_gap:.1e}")
    header = f"{'':28s}" + "".join(f"{k:>10s}" for k in keys) + f"{'wall s':>10s}"
    print(header)
    print(f"{'pretrained (no training)':28s}" + "".join(f"{base[k]:10.4f}" for k in keys) + f"{'-':>10s}")
    print(f"{'sentence-transformers fit':28s}" + "".join(f"{st_scores[k]:10.4f}" for k in keys) + f"{st_seconds:10.1f}")
    print(f"{'contrastlab finetune_text':28s}" + "".join(f"{cl_scores[k]:10.4f}" for k in keys) + f"{cl_seconds:10.1f}")
    ratio = {k: (cl_scores[k] / st_scores[k] if st_scores[k] > 0 else math.nan) for k in keys}
    print(
        f"{'ratio contrastlab / ST':28s}"
        + "".join(f"{ratio[k]:10.3f}" for k in keys)
        + f"{cl_seconds / st_seconds:10.3f}"
    )
    return {"pretrained": base, "sentence_transformers": st_scores, "contrastlab": cl_scores,
            "seconds": {"sentence_transformers": st_seconds, "contrastlab": cl_seconds},
            "steps": {"sentence_transformers": st_steps, "contrastlab": cl_steps}, "start_gap": start_gap}  # fmt: skip


if __name__ == "__main__":
    main()
