"""End-to-end CLIP and bi-encoder runs through the real CLI (debug=fast), a CLIP checkpoint re-evaluating
to exactly the metrics its run logged, and start-up refusals of incompatible choices (composed in-process)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from writers import write_image_text_csv

from contrastlab.config import build

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230)}
SHAPES = ("square", "circle")


SMALL = ["data.image_size=16", "encoder.width=8", "text_encoder.width=32", "text_encoder.depth=1"]


def test_clip_on_image_text_csv_runs_and_its_checkpoint_reevaluates_to_the_logged_metrics(train, tmp_path):
    """The acceptance command (objective=clip data=image_text_csv data.path=... debug=fast), here with
    SigLIP and a label column; the checkpoint, rebuilt from its own config, re-evaluates to the logged metrics."""
    path = write_image_text_csv(tmp_path / "data", n_images=48, labelled=True)
    run = train(
        "objective=clip",
        "loss=siglip",
        "data=image_text_csv",
        f"data.path={path}",
        "data.label_key=shape",
        "debug=fast",
        *SMALL,
    )
    m = run.metrics
    for key in ("val/i2t_recall@5", "val/t2i_recall@5", "val/i2t_median_rank", "val/zero_shot_top1", "val/mean_recall"):
        assert key in m, key
    assert 0 < m["train/logit_scale"] <= 100 and "train/logit_bias" in m
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["contrastlab"]["objective"] == "clip"
    cfg = OmegaConf.create(ckpt["contrastlab"]["config"])
    model = build.build_objective(cfg)
    model.load_state_dict(ckpt["state_dict"])
    again = model.evaluate_metrics(build.build_datamodule(cfg))
    for key, value in again.items():
        assert value == pytest.approx(m[key], abs=1e-6), key  # logged values pass through float32


def test_biencoder_experiment_on_the_shipped_demo_pairs(train):
    run = train("experiment=biencoder_text_pairs", "debug=fast")
    m = run.metrics
    assert m["val/q2d_recall@10"] >= m["val/q2d_recall@10_chance"]
    assert {"val/d2q_recall@1", "val/q2d_median_rank", "train/logit_scale"} <= set(m)


def compose(*overrides: str):
    """The composed config, with Hydra's runtime choices set (as in a real run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=build.CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a run's cfg has no hydra node; ${hydra:...} resolves through HydraConfig
    return cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["objective=clip", "data=digits"],
            "objective=clip trains on image–caption pairs and data=digits has no captions; "
            "set data=shapes_captions (or data=image_text_csv data.path=<your table>).",
        ),
        (["objective=simclr", "data=shapes_captions"], "set objective=clip."),
        (["objective=triplet", "data=text_pairs"], "set objective=biencoder."),
        (["objective=clip", "data=shapes_captions", "loss=nt_xent"], "set loss=clip (or loss=siglip)."),
        (["objective=clip", "data=shapes_captions", "sampler=memory_bank"], "set sampler=in_batch."),
        (["objective=clip", "data=shapes_captions", "~text_encoder"], "set text_encoder=transformer"),
        (["objective=biencoder", "data=digits"], "set data=text_pairs."),
        (["objective=biencoder", "callbacks.knn=null"], "set callbacks.collapse=null."),
        (["objective=simclr", "loss=clip"], "loss=clip does not fit objective=simclr"),
    ],
)
def test_incompatible_choices_are_refused_at_start_up(overrides, message):
    from contrastlab.config.checks import ConfigError, check_config

    with pytest.raises(ConfigError) as err:
        check_config(compose(*overrides, "hydra.run.dir=/tmp/unused"))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=clip_shapes"],
        ["experiment=biencoder_text_pairs"],
        ["objective=clip", "data=shapes_captions", "loss=siglip", "text_encoder=hf"],
        ["objective=clip", "data=image_text_csv", "data.path={csv}"],
    ],
)
def test_valid_choices_pass(overrides, tmp_path):
    from contrastlab.config.checks import check_config

    csv_path = write_image_text_csv(tmp_path, n_images=3)
    cfg = compose(*[o.format(csv=csv_path) for o in overrides], "hydra.run.dir=/tmp/unused")
    check_config(cfg)
    assert cfg.text_encoder is not None and cfg.loss._target_.endswith(("CLIPLoss", "SigLIPLoss"))
