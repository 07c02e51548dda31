"""Start-up checks of the triplet objective and the samplers: misuse fails naming the key to change."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from contrastlab.config import build
from contrastlab.config.checks import ConfigError, check_config
from contrastlab.data import DigitsDataModule


class UnlabelledDigits(DigitsDataModule):
    """Digits whose datamodule declares no labels (like an unlabelled image folder)."""

    has_labels = False


def checked(*overrides: str) -> None:
    with initialize_config_dir(build.CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # so messages name the options as typed
        try:
            check_config(cfg)
        finally:
            HydraConfig.instance().cfg = None  # leave no global state to other tests


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=triplet", "sampler=in_batch"], "sampler=in_batch does not serve objective=triplet"),
        (["objective=simclr", "sampler=batch_hard"], "set sampler=in_batch"),
        (["objective=simclr", "sampler=ann_mined"], "sampler=ann_mined does not serve objective=simclr"),
        (["objective=triplet", "loss=nt_xent"], "set loss=triplet"),
        (["objective=simclr", "loss=triplet"], "set loss=nt_xent"),
        (
            ["objective=triplet", "+data/batch_sampler=pk", "data.batch_sampler.k=1"],
            "data.batch_sampler.k to at least 2",
        ),
        (
            ["objective=triplet", "sampler=memory_bank", "sampler.size=100", "data.batch_size=64"],
            "sampler.size=100",
        ),
        (
            ["objective=simclr", "sampler=memory_bank", "sampler.size=100", "data.batch_size=64"],
            "at least 128",
        ),
        (["objective=triplet", "sampler=batch_all", "loss=triplet_soft"], "set loss.soft_margin=false"),
        (
            ["objective=triplet", "sampler=memory_bank", "sampler.mining=batch_all", "loss.soft_margin=true"],
            "loss.soft_margin",
        ),
        (
            ["objective=triplet", "sampler=ann_mined", "sampler.rank_min=10", "sampler.rank_max=5"],
            "sampler.rank_min",
        ),
        (["objective=triplet", "loss.margin=-0.1"], "loss.margin must be >= 0"),
        (["objective=triplet", "objective.positives=views", "+data.views=1"], "set data.views=2"),
        (
            ["objective=triplet", f"data._target_={__name__}.UnlabelledDigits"],
            "set objective.positives=views",
        ),
    ],
)
def test_misuse_fails_at_start_up_naming_the_override(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked(*overrides)


@pytest.mark.parametrize("sampler", ["batch_hard", "semi_hard", "batch_all", "memory_bank", "ann_mined"])
def test_every_triplet_sampler_is_accepted(sampler):
    checked("objective=triplet", f"sampler={sampler}")
    checked(
        "objective=triplet",
        f"sampler={sampler}",
        "objective.positives=views",
        f"data._target_={__name__}.UnlabelledDigits",
    )


def test_simclr_samplers_and_pk_batches_are_accepted():
    checked("objective=simclr", "sampler=memory_bank")
    checked("objective=simclr", "sampler=in_batch")
    checked("objective=triplet", "+data/batch_sampler=pk", "data.batch_sampler.k=8", "data.batch_size=80")


@pytest.mark.slow
def test_cli_refuses_label_positives_on_an_unlabelled_folder(tmp_path, train):
    """The image folder only learns it has no labels when it scans the folder: the objective refuses
    it at set-up, before the first step."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(flat / f"{i}.png")
    run = train(
        "objective=triplet",
        "objective.positives=labels",
        "data=imagefolder",
        f"data.data_dir={flat}",
        "data.image_size=8",
        "data.num_workers=0",
        "augment=digits",
        "debug=fast",
        check=False,
    )
    assert run.proc.returncode != 0
    assert "objective.positives=labels but ImageFolderDataModule has no labels" in run.output


@pytest.mark.slow
def test_cli_refuses_pk_batches_of_one_item_per_class(train):
    run = train(
        "objective=triplet",
        "sampler=semi_hard",
        "+data/batch_sampler=pk",
        "data.batch_sampler.k=1",
        "debug=fast",
        check=False,
    )
    assert run.proc.returncode != 0
    assert "set data.batch_sampler.k to at least 2" in run.output
