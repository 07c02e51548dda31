"""The README commands that need the network, run against files this test writes.

    contrastlab-train data=cifar10 augment=simclr encoder=resnet18_cifar data.download=true
    contrastlab-train encoder=timm encoder.name=convnext_atto encoder.pretrained=true   # hub weights

No network here, so the "internet" is replaced by local files in the real formats:

* CIFAR-10: a tiny ``cifar-10-python.tar.gz`` (the real archive layout and pickle format, 35 training
  and 10 test images) is served by an ``http.server`` on 127.0.0.1, and torchvision's ``CIFAR10`` class
  attributes that describe the real archive (``url``, ``tgz_md5``, the per-file md5s in ``train_list`` /
  ``test_list`` / ``meta``) are pointed at that archive -- a mirror of our own. Everything else is
  torchvision's real download path: fetch, md5 check of the archive, extraction, md5 check of every
  file (``data.verify_md5=true``, the default).
* timm hub weights: a Hugging Face cache under ``tmp/hf`` laid out as ``huggingface_hub`` writes it
  (``hub/models--timm--convnext_atto.d2_in1k/{refs/main, blobs/<sha256>, snapshots/<commit>/
  model.safetensors -> ../../blobs/<sha256>}``) holds weights written by the test, and
  ``HF_HUB_OFFLINE=1`` makes the hub client read only that cache, as it would after a first online run.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import train_run
from huggingface_hub import constants as hf_constants
from huggingface_hub import scan_cache_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torchvision.datasets import CIFAR10
from writers import write_cifar10

from contrastlab import api
from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.data import CIFAR10DataModule, DataDirError
from contrastlab.encoders.timm_encoder import EncoderInputError, TimmEncoder

ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_COMMAND = ["data=cifar10", "augment=simclr", "encoder=resnet18_cifar", "data.download=true"]
HUB_COMMAND = ["encoder=timm", "encoder.name=convnext_atto", "encoder.pretrained=true"]
# what the hardware forces: a few CPU seconds per run, a CSV log instead of W&B, no config print
TINY = ["debug=fast", "logger=csv", "print_config=false"]


@pytest.fixture(autouse=True)
def no_hydra_config_left_behind() -> Iterator[None]:
    """api.compose installs a global HydraConfig; later tests in this process must not see it."""
    yield
    HydraConfig.instance().cfg = None


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def one_line_cli_message(err: BaseException) -> str:
    """What ``contrastlab-train`` prints for ``err`` (after ``error:``, exit status 2): one line."""
    assert boundary.is_bad_input(err), f"{type(err).__name__} would end the CLI with a traceback"
    message = boundary.message_for(err)
    assert message is not None and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------
# CIFAR-10: torchvision's download path against a local mirror


class Mirror:
    """An HTTP server on 127.0.0.1 that serves ``payload`` at ``/cifar-10-python.tar.gz`` and records
    every request as ``(method, path)``."""

    def __init__(self) -> None:
        self.payload = b""
        self.requests: list[tuple[str, str]] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                mirror.requests.append(("GET", self.path))
                if self.path != f"/{ARCHIVE}":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(mirror.payload)))
                self.end_headers()
                self.wfile.write(mirror.payload)

            def log_message(self, *args: object) -> None:  # keep pytest's output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/{ARCHIVE}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fetches(self) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and path == f"/{ARCHIVE}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def cifar10_archive(staging: Path) -> tuple[bytes, dict[str, str], dict]:
    """``(tar.gz bytes, {file name: md5}, images)``: the real archive layout -- one top folder
    ``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch``, ``batches.meta`` -- holding 35
    training images (one ``debug=fast`` batch of 32, ``drop_last``) and 10 test images."""
    fake = write_cifar10(staging, per_batch=7, n_test=10, seed=3)
    folder = staging / "cifar-10-batches-py"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    sums = {f.name: md5(f.read_bytes()) for f in sorted(folder.iterdir())}
    return buf.getvalue(), sums, fake


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Mirror, bytes, dict[str, str], dict]]:
    """The mirror serving our archive, torchvision's CIFAR10 pointed at it, ``CONTRASTLAB_DATA`` in
    tmp (so ``data.data_dir`` is the config's own ``${paths.data_dir}/cifar10``)."""
    archive, sums, fake = cifar10_archive(tmp_path / "staging")
    server = Mirror()
    server.payload = archive
    monkeypatch.setattr(CIFAR10, "url", server.url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{k}", sums[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})
    monkeypatch.setenv("CONTRASTLAB_DATA", str(tmp_path / "data"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    try:
        yield server, archive, sums, fake
    finally:
        server.close()


@pytest.mark.slow
def test_cifar10_download_fetches_verifies_extracts_trains_and_fetches_only_once(
    tmp_path: Path, mirror: tuple[Mirror, bytes, dict[str, str], dict]
) -> None:
    """The README command in-process (``api.train`` runs the CLI's Hydra main) with ``debug=fast
    logger=csv print_config=false`` added and ``CONTRASTLAB_DATA`` set to tmp; the download comes
    from the local mirror (see the module docstring). First the mirror serves a corrupt archive (a
    flipped byte: its md5 differs), then the real one."""
    server, archive, sums, fake = mirror
    root = tmp_path / "data" / "cifar10"

    # 1. a corrupt download: a clear error naming data.download, nothing extracted
    server.payload = archive[:100] + bytes([archive[100] ^ 0xFF]) + archive[101:]
    with pytest.raises(DataDirError) as info:
        api.train([*CIFAR_COMMAND, *TINY], tmp_path / "corrupt")
    message = one_line_cli_message(info.value)
    assert message.startswith("data.download=true fetched CIFAR-10 files into data.data_dir=")
    assert "md5" in message and "run again" in message and "data.download=false" in message
    corrupt_fetches = server.fetches()
    assert corrupt_fetches >= 1
    assert (root / ARCHIVE).read_bytes() == server.payload  # torchvision keeps the bad archive ...
    assert not (root / "cifar-10-batches-py").exists()  # ... and extracts nothing from it
    assert not (tmp_path / "corrupt" / "metrics.json").exists()

    # 2. the retry against a good mirror: fetched again, verified, extracted, trained
    server.payload = archive
    metrics = api.train([*CIFAR_COMMAND, *TINY], tmp_path / "run1")
    assert server.fetches() > corrupt_fetches
    assert md5((root / ARCHIVE).read_bytes()) == md5(archive)  # the corrupt archive was replaced
    extracted = {f.name: md5(f.read_bytes()) for f in (root / "cifar-10-batches-py").iterdir()}
    assert extracted == sums  # every file of the archive, byte for byte
    written = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert written["trainer/global_step"] == metrics["trainer/global_step"] == 1  # our 35 images: one batch
    assert written["val/knn_top1"] >= 0.5 and "val/knn_top1_init" in written  # class-coloured images; chance 0.1
    assert (tmp_path / "run1" / "checkpoints" / "last.ckpt").is_file()
    config = OmegaConf.load(tmp_path / "run1" / ".hydra" / "config.yaml")
    assert config.data._target_ == "contrastlab.data.CIFAR10DataModule" and config.data.download is True

    # 3. the same command again: the files are there and pass the md5 check, nothing is fetched. Its
    # datamodule (composed and built as a run does; the fetch decision is all in prepare_data) reads the
    # archive's images without a request.
    requests_before = list(server.requests)
    dm = build.build_datamodule(api.compose([*CIFAR_COMMAND, *TINY], tmp_path / "run2"))
    dm.prepare_data()
    dm.setup()
    assert server.requests == requests_before
    assert dm.train_labels().tolist() == fake["train_y"].tolist()
    image, label = dm.val_base[9]
    assert np.array_equal(np.asarray(image), fake["test_x"][9]) and label == fake["test_y"][9]


def test_cifar10_download_with_the_mirror_down_names_the_keys(
    tmp_path: Path, mirror: tuple[Mirror, bytes, dict[str, str], dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server listening at the url (a closed port): the error says the fetch failed, not that the
    files are missing or unparsable."""
    with socket.socket() as sock:  # a free port that nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{port}/{ARCHIVE}")
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "c10"), download=True, batch_size=4)
    with pytest.raises(DataDirError) as info:
        dm.prepare_data()
    message = one_line_cli_message(info.value)
    assert message.startswith("data.download=true could not fetch the CIFAR-10 files into data.data_dir=")
    assert "URLError" in message and "network" in message and "data.download=false" in message
    assert not (tmp_path / "c10" / "cifar-10-batches-py").exists()


# ---------------------------------------------------------------------------------------------------
# timm hub weights from a Hugging Face cache written by the test

HUB_REPO = "timm/convnext_atto.d2_in1k"  # timm 1.0's default pretrained tag of convnext_atto
COMMIT = "4f1c9a0d2b7e6c5a8f3d1e0b9c7a6d5e4f3a2b1c"


def write_hub_cache(hf_home: Path) -> dict[str, torch.Tensor]:
    """``hf_home/hub/models--timm--convnext_atto.d2_in1k/`` as ``huggingface_hub`` lays out a download:
    ``refs/main`` (the commit), ``blobs/<sha256>`` (the file), ``snapshots/<commit>/model.safetensors``
    (a relative link to the blob). The weights are timm's convnext_atto at seed 1234 with a stem drawn
    at scale 0.2 (ten times timm's init scale), so they are told apart from any fresh initialisation."""
    torch.manual_seed(1234)
    weights = {k: v.detach().clone().contiguous() for k, v in timm.create_model("convnext_atto").state_dict().items()}
    stem = weights["stem.0.weight"]
    weights["stem.0.weight"] = 0.2 * torch.randn(stem.shape, generator=torch.Generator().manual_seed(5))
    repo = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    staged = repo / "blobs" / "incoming"
    save_file(weights, staged)
    blob = repo / "blobs" / hashlib.sha256(staged.read_bytes()).hexdigest()
    staged.rename(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return weights


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    hf_home = tmp_path_factory.mktemp("hf")
    weights = write_hub_cache(hf_home)
    return hf_home, weights


def offline_hub(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> None:
    """``HF_HOME=hf_home HF_HUB_OFFLINE=1`` for subprocesses, and the same in this process (whose
    ``huggingface_hub`` already read its constants from the environment at import)."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_the_written_cache_is_what_huggingface_hub_sees(hub_cache: tuple[Path, dict[str, torch.Tensor]]) -> None:
    hf_home, weights = hub_cache
    repos = {r.repo_id: r for r in scan_cache_dir(hf_home / "hub").repos}
    assert set(repos) == {HUB_REPO}
    (revision,) = repos[HUB_REPO].revisions
    assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})
    assert [f.file_name for f in revision.files] == ["model.safetensors"]
    on_disk = load_file(next(iter(revision.files)).file_path)
    assert on_disk.keys() == weights.keys() and all(torch.equal(on_disk[k], weights[k]) for k in weights)
    assert timm.models.get_pretrained_cfg("convnext_atto").hf_hub_id == HUB_REPO


def test_pretrained_encoder_built_as_training_does_holds_the_cached_weights(
    tmp_path: Path, hub_cache: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README overrides composed like ``contrastlab-train`` and built by ``build.build_objective``:
    the backbone equals the file's weights. The default data (digits) is grey, so timm folds the
    file's RGB stem into one input channel (the sum over its 3 channels); the classifier is dropped
    (``num_classes=0``)."""
    hf_home, weights = hub_cache
    offline_hub(monkeypatch, hf_home)
    model = build.build_objective(api.compose(HUB_COMMAND, tmp_path / "run"))
    encoder = model.encoder
    assert isinstance(encoder, TimmEncoder) and encoder.name == "convnext_atto"
    loaded = encoder.model.state_dict()
    backbone = {k for k in weights if not k.startswith("head.fc.")}
    assert set(loaded) == backbone
    for key in sorted(backbone - {"stem.0.weight"}):
        assert torch.equal(loaded[key], weights[key]), key
    torch.testing.assert_close(loaded["stem.0.weight"], weights["stem.0.weight"].sum(dim=1, keepdim=True))
    # the same build without pretrained weights differs: the equality above comes from the file
    fresh = build.build_objective(api.compose(["encoder=timm", "encoder.name=convnext_atto"], tmp_path / "r2"))
    assert not torch.equal(
        fresh.encoder.model.state_dict()["stages.1.blocks.0.conv_dw.weight"],
        weights["stages.1.blocks.0.conv_dw.weight"],
    )


def test_pretrained_convnext_on_the_default_16px_digits_names_data_image_size(
    tmp_path: Path, hub_cache: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README command exactly as written (default data: digits at 16x16) cannot train: convnext
    downsamples 32x, and its 2x2 downsampling convolutions find 1x1 maps. It stops at the first
    forward with one sentence naming data.image_size (before this check: a traceback from conv2d)."""
    hf_home, _ = hub_cache
    offline_hub(monkeypatch, hf_home)
    with pytest.raises(EncoderInputError) as info:
        api.train([*HUB_COMMAND, *TINY], tmp_path / "run")
    message = one_line_cli_message(info.value)
    assert message.startswith("encoder.name=convnext_atto downsamples its input 32x, too much for the 16x16")
    assert "set data.image_size=32 or larger" in message
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_pretrained_convnext_run_from_the_offline_cache(
    tmp_path: Path, hub_cache: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``contrastlab-train encoder=timm encoder.name=convnext_atto encoder.pretrained=true`` in a
    subprocess with ``HF_HOME=<tmp>/hf HF_HUB_OFFLINE=1`` (the hub is the cache written above), plus
    ``debug=fast logger=csv print_config=false`` and ``data.image_size=32`` (the fix the error above
    names: the default digits are 16x16, too small for convnext's 32x downsampling)."""
    hf_home, weights = hub_cache
    offline_hub(monkeypatch, hf_home)
    run = train_run(tmp_path, *HUB_COMMAND, *TINY, "data.image_size=32")
    m = run.metrics
    assert m["trainer/global_step"] == 3  # debug=fast: three batches
    assert (
        m["val/knn_top1"] > 0.5 and "val/knn_top1_init" in m
    )  # chance is 0.1 on digits: a monitor with misaligned labels or features misses this
    # the run started from the cached weights: after 3 AdamW steps at lr <= 2e-3 every weight is within
    # ~3 * 2e-3 of its start, while the file's stem is ~0.2 away from any fresh initialisation
    state = torch.load(run.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stem = state["state_dict"]["encoder.model.stem.0.weight"]
    start = weights["stem.0.weight"].sum(dim=1, keepdim=True)
    assert (stem - start).abs().max() < 0.02
    assert (start - TimmEncoder("convnext_atto", in_chans=1).model.stem[0].weight).abs().max() > 0.2
    conv = state["state_dict"]["encoder.model.stages.2.blocks.0.conv_dw.weight"]
    assert (conv - weights["stages.2.blocks.0.conv_dw.weight"]).abs().max() < 0.02


@pytest.mark.slow
def test_pretrained_without_cached_weights_offline_names_encoder_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README command (plus ``debug=fast logger=csv print_config=false``) in a subprocess with an
    empty ``HF_HOME`` and ``HF_HUB_OFFLINE=1``, as on a machine with no network that never cached the
    weights: one line naming encoder.pretrained, exit status 2, no traceback (timm's error reaches the
    CLI wrapped in Hydra's InstantiationException, which cli_errors unwraps)."""
    offline_hub(monkeypatch, tmp_path / "empty_hf")
    run = train_run(tmp_path, *HUB_COMMAND, *TINY, check=False)
    stderr = run.proc.stderr
    assert run.proc.returncode == boundary.EXIT_BAD_INPUT, run.output[-3000:]
    assert "Traceback" not in stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: encoder.pretrained=true could not load the weights of 'convnext_atto'")
    assert str(tmp_path / "empty_hf" / "hub") in line
    assert "encoder.checkpoint_path" in line and "encoder.pretrained=false" in line
    assert not (run.run_dir / "metrics.json").exists()
