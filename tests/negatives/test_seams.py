"""Explicit seams: every sampler and datamodule is of its declared kind, and a wrong combination is
refused at start-up (config checks) or construction with one sentence naming the override."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf

from contrastlab.config import build
from contrastlab.config.checks import ConfigError, check_config
from contrastlab.data import DigitsDataModule, ImageTextDataModule, TextPairsDataModule
from contrastlab.data.base import ContrastiveDataModule, DataCapabilities, capabilities
from contrastlab.encoders import ProjectionHead, SmallCNN
from contrastlab.losses import NTXentLoss, TripletMarginLoss
from contrastlab.negatives import (
    AnnMined,
    BindsEncoder,
    CandidateSampler,
    InBatch,
    Memory,
    MemoryBank,
    MinedNegativesDataset,
    Miner,
    MiningDataSource,
    NeedsIds,
    NegativeSampler,
    OfflineMiner,
    PairKeys,
    TripletMiner,
)
from contrastlab.objectives import SimCLR, Triplet
from contrastlab.objectives.biencoder import BiEncoder
from contrastlab.objectives.clip import CLIP

CONF = Path(build.CONF_DIR)
KINDS = (CandidateSampler, Miner, PairKeys, OfflineMiner, Memory, NeedsIds, BindsEncoder)


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message and "set " in message


def targets(group: str) -> dict[str, type]:
    """``{option: class}`` of the top-level ``_target_`` of every option of a config group."""
    out = {}
    for path in sorted((CONF / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            out[path.stem] = get_class(target)
    return out


@pytest.mark.parametrize(
    ("sampler", "kinds"),
    [
        (InBatch(), {CandidateSampler, PairKeys}),
        (TripletMiner("batch_hard"), {Miner}),
        (MemoryBank(size=8), {CandidateSampler, Miner, Memory, NeedsIds, BindsEncoder}),
        (AnnMined(use_gpu=False), {Miner, OfflineMiner}),
    ],
    ids=["in_batch", "miner", "memory_bank", "ann_mined"],
)
def test_each_sampler_is_exactly_its_declared_kinds(sampler, kinds):
    assert isinstance(sampler, NegativeSampler) and not inspect.isabstract(type(sampler))
    assert {k for k in KINDS if isinstance(sampler, k)} == kinds


def test_every_sampler_option_is_a_concrete_negative_sampler():
    options = targets("sampler")
    assert {"in_batch", "semi_hard", "batch_hard", "batch_all", "memory_bank", "ann_mined"} <= set(options)
    for name, cls in options.items():
        assert issubclass(cls, NegativeSampler) and not inspect.isabstract(cls), name


def test_objectives_declare_the_kind_they_drive():
    assert (SimCLR.sampler_kind, SimCLR.consumes) == (CandidateSampler, "candidates")
    assert (Triplet.sampler_kind, Triplet.consumes) == (Miner, "triplets")
    assert CLIP.sampler_kind is BiEncoder.sampler_kind is PairKeys and CLIP.consumes == "pairs"


def test_every_data_option_declares_its_capabilities():
    options = targets("data")
    for name, cls in options.items():
        assert issubclass(cls, DataCapabilities), name
    assert DigitsDataModule.labels_possible() and DigitsDataModule.has_images and not DigitsDataModule.has_captions
    assert ImageTextDataModule.has_captions and ImageTextDataModule.labels_possible()  # decided per instance
    pairs = TextPairsDataModule
    assert pairs.has_text_pairs and not pairs.has_images and not pairs.has_captions and not pairs.labels_possible()
    assert issubclass(ContrastiveDataModule, MiningDataSource)
    assert not isinstance(TextPairsDataModule(), MiningDataSource)


def test_an_undeclared_datamodule_gets_the_documented_defaults():
    foreign = capabilities(L.LightningDataModule())
    assert foreign.has_labels and foreign.has_images and not foreign.has_captions and not foreign.has_text_pairs
    dm = DigitsDataModule()
    assert capabilities(dm) is dm


def test_the_datamodule_serves_the_mined_table_it_is_handed():
    dm = DigitsDataModule(image_size=8, batch_size=4, limit_samples=12, augment=lambda x: x)
    assert not isinstance(dm.train_dataloader().dataset, MinedNegativesDataset)
    loader = dm.train_loader_for_mining()
    assert len(loader.dataset) == 12
    first = next(iter(loader))
    assert first["image"].shape == (4, 1, 8, 8) and first["label"].shape == (4,)
    table = (torch.arange(12)[:, None] + torch.tensor([1, 2])) % 12  # items i+1, i+2
    dm.set_mined_negatives(table)
    ds = dm.train_dataloader().dataset
    assert isinstance(ds, MinedNegativesDataset) and ds.table is table
    item = ds[3]
    assert item["negative_index"].tolist() == [4, 5] and item["negatives"].shape == (2, 1, 8, 8)
    base = dm.eval_train_dataloader().dataset
    assert item["negative_label"].tolist() == [base[4]["label"], base[5]["label"]]


def _parts():
    return {"encoder": SmallCNN(1, width=4, stages=1, out_dim=8), "head": ProjectionHead(8, num_layers=0)}


@pytest.mark.parametrize(
    ("objective", "loss", "sampler", "message"),
    [
        (
            SimCLR,
            NTXentLoss(),
            TripletMiner(),
            "objective=simclr needs a candidate-set sampler, got TripletMiner; set sampler=in_batch (or memory_bank).",
        ),
        (SimCLR, NTXentLoss(), AnnMined(), "set sampler=in_batch (or memory_bank)."),
        (Triplet, TripletMarginLoss(), InBatch(), "objective=triplet needs a mining sampler, got InBatch;"),
    ],
)
def test_a_sampler_of_the_wrong_kind_is_refused_at_construction(objective, loss, sampler, message):
    with pytest.raises(ConfigError) as err:
        objective(loss=loss, negatives=sampler, optimizer=torch.optim.SGD, **_parts())
    assert message in str(err.value) and one_sentence(str(err.value))


def test_binding_samplers_are_bound_to_the_objectives_network():
    bank = MemoryBank(size=64, momentum=0.9)
    model = SimCLR(loss=NTXentLoss(), negatives=bank, optimizer=torch.optim.SGD, **_parts())
    assert bank.key_encoder is not None
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(bank.key_encoder(x), model.project(x))  # a copy of (encoder, head)


def test_offline_mining_on_a_datamodule_that_cannot_serve_it_is_refused_at_set_up():
    model = Triplet(
        loss=TripletMarginLoss(), negatives=AnnMined(), positives="views", optimizer=torch.optim.SGD, **_parts()
    )
    model._trainer = SimpleNamespace(datamodule=TextPairsDataModule())  # what setup() reads
    with pytest.raises(ValueError) as err:
        model.setup("fit")
    assert "sampler=ann_mined serves its mined negatives through the datamodule" in str(err.value)
    assert one_sentence(str(err.value))


def checked(*overrides: str) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # so messages name the options as typed
        try:
            check_config(cfg)
        finally:
            HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective=simclr", "sampler=semi_hard"],
            "sampler=semi_hard does not serve objective=simclr (candidates); set sampler=in_batch (or memory_bank).",
        ),
        (
            ["objective=triplet", "sampler=in_batch"],
            "sampler=in_batch does not serve objective=triplet (triplets); set sampler=semi_hard (or batch_hard, "
            "batch_all, memory_bank, ann_mined).",
        ),
        (
            ["objective=clip", "data=shapes_captions", "sampler=memory_bank"],
            "objective=clip takes its negatives from the batch; set sampler=in_batch.",
        ),
        (["objective=simclr", "data=text_pairs"], "set objective=biencoder."),
    ],
)
def test_a_wrong_combination_is_refused_at_start_up_with_one_sentence(overrides, message):
    with pytest.raises(ConfigError) as err:
        checked(*overrides)
    assert message in str(err.value) and one_sentence(str(err.value))


def test_the_declared_combinations_pass_the_start_up_checks():
    checked("objective=simclr", "sampler=in_batch")
    checked("objective=simclr", "sampler=memory_bank")
    checked("objective=triplet", "sampler=ann_mined")
    checked("objective=clip", "data=shapes_captions", "sampler=in_batch")
