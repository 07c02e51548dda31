"""``format=onnx``: a checkpoint's towers as ONNX graphs, checked against PyTorch with onnxruntime at export time.

``format.tower``: ``auto`` exports every tower the checkpoint has (SimCLR / triplet: the image tower; a
bi-encoder: its text tower, or ``query`` and ``document`` with two towers; CLIP: image and text), or name one:
``image``, ``text``, ``query``, ``document``. Each tower is one file in ``output_dir``:

* ``image.onnx``: input ``image`` (B, C, H, W) float32 (normalised as the evaluation transform does) ->
  ``image_embedding`` (B, D): CLIP's normalised joint embedding, else the encoder output (as
  ``contrastlab-embed``);
* ``text.onnx`` / ``query.onnx`` / ``document.onnx``: inputs ``input_ids``, ``attention_mask`` (and
  ``token_type_ids`` when the tokenizer makes them), int64 (B, L) -> ``sentence_embedding`` (B, D),
  L2-normalised.
  The tokenizer goes alongside: a Hugging Face tokenizer folder ``tokenizer/`` (``AutoTokenizer``), or for
  ``text_encoder=transformer`` the vocabulary ``<tower>_vocabulary.json`` (ids as in
  :mod:`contrastlab.encoders.tokenizer`).

Batch size and sequence length are dynamic (``format.exporter``: ``dynamo``, torch.export, the default; or
``torchscript``, the older tracer). The check runs the graph with onnxruntime on validation inputs of
another batch size (and text lengths) than the traced ones; a maximum absolute difference above ``atol``
(default 1e-4) fails the export. ``export.json`` records inputs, outputs and the measured differences.
onnx and onnxruntime come with ``pip install 'contrastlab[export]'``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab.encoders.text import HFTextEncoder
from contrastlab.export.common import (
    ExportCheckFailed,
    ExportFormatError,
    TextTower,
    image_tower,
    max_abs_diff,
    sample_images,
    sample_texts,
    text_towers,
)

TOWERS = ("auto", "image", "text", "query", "document")
TEXT_OUTPUT, IMAGE_OUTPUT = "sentence_embedding", "image_embedding"


class _TextGraph(nn.Module):
    """token tensors (positional, in ``keys`` order) -> normalize(projection(tower(**tokens))), (B, D)."""

    def __init__(self, tower: TextTower, keys: list[str]) -> None:
        super().__init__()
        self.encoder, self.projection, self.keys = tower.encoder, tower.projection, keys

    def forward(self, *tokens: Tensor) -> Tensor:
        return F.normalize(self.projection(self.encoder(**dict(zip(self.keys, tokens, strict=True)))), dim=1)


class _ImageGraph(nn.Module):
    def __init__(self, fn: Any, module: nn.Module) -> None:
        super().__init__()
        self.module, self.fn = module, fn  # ``module`` registers the weights; ``fn`` is its bound method

    def forward(self, *inputs: Tensor) -> Tensor:  # (image,): positional like the text graph's inputs
        return self.fn(inputs[0])


def _runtime(exporter: str = "torchscript") -> Any:
    """onnxruntime (and a check that the exporter's packages are installed: onnx; onnxscript for dynamo)."""
    try:
        import onnx  # noqa: F401  (both exporters write through it)
        import onnxruntime

        if exporter == "dynamo":
            import onnxscript  # noqa: F401  (torch.export -> ONNX translation)
    except ImportError as err:
        raise ExportFormatError(
            f"format=onnx needs onnx, onnxruntime and onnxscript ({err.name} is not installed); "
            "install them with pip install 'contrastlab[export]'."
        ) from err
    return onnxruntime


@contextmanager
def _no_extra_state(graph: nn.Module) -> Iterator[None]:
    """Hide non-tensor extra state (an offline tower's vocabulary) from the tracer, which reads every state-dict
    entry as a tensor; the modules get their own classes back afterwards."""
    swapped = []
    for m in graph.modules():
        cls = type(m)
        if getattr(cls, "get_extra_state", nn.Module.get_extra_state) is not nn.Module.get_extra_state:
            m.__class__ = type(cls.__name__, (cls,), {"get_extra_state": nn.Module.get_extra_state})
            swapped.append((m, cls))
    try:
        yield
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def _export_graph(
    graph: nn.Module,
    args: tuple[Tensor, ...],
    names: list[str],
    output: str,
    dynamic: list[dict[int, str]],
    path: Path,
    opset: int,
    exporter: str,
) -> None:
    """Export ``graph`` traced on ``args`` into ``path`` with the named axes of each input dynamic (``dynamo``:
    torch.export, the default; ``torchscript``: the older tracer, faster but it bakes some shapes in, which
    the check then reports)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.TransformerEncoder's fused kernel has no ONNX form
    try:
        with _no_extra_state(graph):
            if exporter == "dynamo":
                dims = {a: torch.export.Dim(a, max=65536) for d in dynamic for a in d.values()}
                shapes = (tuple({i: dims[a] for i, a in d.items()} for d in dynamic),)
                program = torch.onnx.export(
                    graph, args, None, input_names=names, output_names=[output], dynamic_shapes=shapes,
                    opset_version=opset, dynamo=True, verbose=False,
                )  # fmt: skip
                program.save(str(path))
            else:
                axes = {**dict(zip(names, dynamic, strict=True)), output: {0: "batch"}}
                # format.exporter=torchscript is an explicit choice of PyTorch's legacy exporter, so its
                # deprecation notice is dropped; the tracer's warnings (a Python bool taken from a tensor)
                # are too: _check runs the graph on another input shape and names any shape baked in.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    torch.onnx.export(
                        graph, args, str(path), input_names=names, output_names=[output], dynamic_axes=axes,
                        opset_version=opset, dynamo=False,
                    )  # fmt: skip
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _check(
    path: Path, graph: nn.Module, names: list[str], output: str, cases: list[tuple[Tensor, ...]], atol: float
) -> float:
    """Max abs difference between onnxruntime and PyTorch over ``cases``; raises above ``atol`` (or when the
    graph does not run on an input shape other than the traced one)."""
    ort = _runtime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for args in cases:
        with torch.no_grad():
            want = graph(*args).float().cpu()
        feed = {n: a.cpu().numpy() for n, a in zip(names, args, strict=True)}
        try:
            got = torch.from_numpy(session.run([output], feed)[0])
        except Exception as err:  # onnxruntime's own error types: a shape baked into the graph
            why = str(err).strip().splitlines()[0][:200]
            raise ExportCheckFailed(
                f"{path.name} does not run on inputs of another shape ({why}); set format.exporter=dynamo."
            ) from err
        worst = max(worst, max_abs_diff(got, want))
    if not worst <= atol:
        raise ExportCheckFailed(
            f"{path.name} differs from the PyTorch model by up to {worst:.2e} (more than format.atol={atol}); "
            "try another format.opset or format.exporter, or report this with the checkpoint's encoder settings."
        )
    return worst


def _export_text(ckpt: Any, tower: TextTower, out: Path, opset: int, atol: float, exporter: str) -> dict[str, Any]:
    texts = sample_texts(ckpt, 8)
    enc = tower.encoder
    traced = enc.tokenize(texts[:2])  # type: ignore[operator]
    names = list(traced)
    graph = _TextGraph(tower, names).eval()
    path = out / f"{tower.name}.onnx"
    args = tuple(traced[n] for n in names)
    _export_graph(graph, args, names, TEXT_OUTPUT, [{0: "batch", 1: "sequence"}] * len(names), path, opset, exporter)
    cases = [tuple(t[n] for n in names) for t in (enc.tokenize(texts[2:5]), enc.tokenize(texts))]  # type: ignore[operator]
    diff = _check(path, graph, names, TEXT_OUTPUT, cases, atol)
    if isinstance(enc, HFTextEncoder):
        enc.hf_tokenizer.save_pretrained(str(out / "tokenizer"))
        tokenizer = {"kind": "hf", "path": "tokenizer", "max_length": enc.max_length, "prompt": enc.layout.prompt,
                     "lowercase": enc.layout.do_lower_case}  # fmt: skip
    else:
        vocab = out / f"{tower.name}_vocabulary.json"
        vocab.write_text(json.dumps(enc.tokenizer.state_dict()) + "\n", encoding="utf-8")  # type: ignore[union-attr]
        tokenizer = {"kind": "contrastlab", "path": vocab.name}
    with torch.no_grad():
        dim = int(graph(*cases[0]).shape[1])
    return {"file": path.name, "inputs": names, "output": TEXT_OUTPUT, "dim": dim, "normalized": True,
            "tokenizer": tokenizer, "max_abs_diff": diff}  # fmt: skip


def _export_image(ckpt: Any, out: Path, opset: int, atol: float, exporter: str) -> dict[str, Any]:
    tower = image_tower(ckpt, "onnx")
    images = sample_images(ckpt, 5)
    graph = _ImageGraph(tower.fn, tower.module).eval()
    path = out / "image.onnx"
    _export_graph(graph, (images[:2],), ["image"], IMAGE_OUTPUT, [{0: "batch"}], path, opset, exporter)
    diff = _check(path, graph, ["image"], IMAGE_OUTPUT, [(images[2:5],), (images[:1],)], atol)
    return {"file": path.name, "inputs": ["image"], "input_shape": ["batch", *images.shape[1:]], "output": IMAGE_OUTPUT,
            "dim": int(graph(images[:1]).shape[1]), "space": tower.space, "max_abs_diff": diff}  # fmt: skip


def export(
    ckpt: Any,
    output_dir: str | Path,
    tower: str = "auto",
    opset: int = 18,
    atol: float = 1e-4,
    exporter: str = "dynamo",
) -> dict[str, Any]:
    """Export the towers ``tower`` names into ``output_dir`` (see the module docstring); returns a summary."""
    if tower not in TOWERS:
        raise ExportFormatError(f"format.tower={tower} is not one of {', '.join(TOWERS)}; set e.g. format.tower=auto.")
    if exporter not in ("dynamo", "torchscript"):
        raise ExportFormatError(f"format.exporter={exporter} is not dynamo or torchscript; set format.exporter=dynamo.")
    _runtime(exporter)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = ckpt.model.cpu().eval()
    has_image = getattr(model, "encoder", None) is not None
    has_text = getattr(model, "text_encoder", None) is not None
    graphs: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        if tower == "image" or (tower == "auto" and has_image):
            graphs["image"] = _export_image(ckpt, out, opset, atol, exporter)
        if tower in ("text", "query", "document") or (tower == "auto" and has_text):
            for t in text_towers(ckpt, tower, "onnx"):
                graphs[t.name] = _export_text(ckpt, t, out, opset, atol, exporter)
    summary = {"format": "onnx", "objective": ckpt.objective, "exporter": exporter, "opset": opset, "atol": atol,
               "towers": graphs}  # fmt: skip
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return {**summary, "output_dir": str(out), "max_abs_diff": max(g["max_abs_diff"] for g in graphs.values())}
