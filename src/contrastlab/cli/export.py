"""``contrastlab-export``: write a trained checkpoint in a format serving tools load.

    contrastlab-export ckpt_path=outputs/finetune_text/runs/<run>/checkpoints/last.ckpt format=sentence_transformers \
        output_dir=my-model                                   # SentenceTransformer("my-model")
    contrastlab-export ckpt_path=... format=hf output_dir=my-hf           # AutoModel / AutoTokenizer
    contrastlab-export ckpt_path=... format=onnx format.tower=image output_dir=onnx   # checked with onnxruntime

``format`` is a config group (``conf/format/<name>.yaml``); its ``_target_`` is the exporter function
(:mod:`contrastlab.export`), called with the loaded checkpoint and ``output_dir``. A format that does not fit the
checkpoint ends with one line and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from contrastlab.cli import boundary
from contrastlab.config import build
from contrastlab.errors import ConfigError
from contrastlab.training.checkpoints import load_checkpoint, read_checkpoint, run_dir_of


def format_name(cfg: DictConfig) -> str:
    try:
        return str(HydraConfig.get().runtime.choices["format"])
    except (ValueError, KeyError, AttributeError):
        return str(cfg.format.get("_target_", "export")).rsplit(".", 2)[-2]


def output_folder(cfg: DictConfig, run_dir: Path) -> Path:
    out = Path(str(cfg.output_dir)).expanduser() if cfg.get("output_dir") else run_dir / "export" / format_name(cfg)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={out} is a file; set output_dir to a folder.")
    if out.is_dir() and any(out.iterdir()) and not cfg.get("overwrite", False):
        raise ConfigError(
            f"output_dir={out} already holds files; set output_dir to a new folder or add overwrite=true."
        )
    return out


def run_export(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("format") is None:
        raise ConfigError("format= is required: format=sentence_transformers, format=hf or format=onnx.")
    exporter = instantiate(cfg.format)  # a partial of the format's export function
    if cfg.get("ckpt_path") in (None, "", "???"):
        read_checkpoint(cfg.get("ckpt_path"))  # raises the one-line "ckpt_path= is required"
    out = output_folder(cfg, run_dir_of(cfg.ckpt_path))  # refuse a full folder before loading anything
    ckpt = load_checkpoint(cfg.ckpt_path, device=cfg.device, trust=cfg.trust_checkpoint)
    summary = exporter(ckpt=ckpt, output_dir=out)
    brief = {k: v for k, v in summary.items() if k not in ("files", "towers")}
    print(f"exported {ckpt.objective} checkpoint as {format_name(cfg)} to {out}")
    print(json.dumps(brief, indent=None, default=str))
    return summary


@hydra.main(version_base="1.3", config_path=build.CONF_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    boundary.run_task(run_export, cfg)


def main() -> Any:
    """The ``contrastlab-export`` command; bad input ends with one line on stderr and exit status 2."""
    return boundary.run_main(hydra_main)


if __name__ == "__main__":
    main()
