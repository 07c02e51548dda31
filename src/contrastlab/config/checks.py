"""Start-up validation: incompatible choices fail before any data is loaded or process spawned,
with one sentence that names the override to change."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_object
from omegaconf import DictConfig

from contrastlab.config import values
from contrastlab.config.values import world_size as _world
from contrastlab.errors import ConfigError, choices_of

if TYPE_CHECKING:  # the heavy modules are imported by the checks that need them
    from contrastlab.data.base import DataCapabilities


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found."""

    # light checks first (no torch / Lightning import; unresolvable keys are skipped, not reported)
    values.check_values(cfg)  # required keys; numbers in range (loss.temperature > 0, ...)
    check_parameters(cfg, values.overridden_keys())  # choices (loss.distance=banana); null where none is taken
    data = cfg.get("data") or {}
    if int(data.get("batch_size", 2)) < 2:
        raise ConfigError(
            f"data.batch_size={data.batch_size} leaves no in-batch negatives; set data.batch_size to at least 2."
        )
    check_data_dir(data)
    values.check_tables(cfg)  # data.path / val_path tables exist, with the named columns
    values.check_distributed(cfg)  # cross-rank gather needs data.drop_last=true
    values.check_grad_cache(cfg)  # micro-batch divides the batch
    check_two_towers(cfg)  # before check_negatives: a text-only dataset leaves image keys unresolvable
    check_negatives(cfg)
    check_sync_batchnorm(cfg)
    check_gpus(cfg.get("trainer") or {})


def check_gpus(trainer: DictConfig | dict) -> None:
    """A GPU trainer (``trainer=gpu|ddp``) needs CUDA GPUs on this node, at least ``trainer.devices`` of
    them (devices are per node). Under torchrun each process may see only its own GPU, which Lightning
    accepts, and so do we."""
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    from contrastlab import distributed

    visible = torch.cuda.device_count()
    if visible == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here; "
            "set trainer=cpu (or trainer=ddp_cpu for the multi-process code path on CPU)."
        )
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > visible and not distributed.launched_by_torchrun():
        raise ConfigError(
            f"trainer.devices={devices} but this node has {visible} visible GPU(s); set trainer.devices={visible} "
            "(devices count per node; add nodes with trainer.num_nodes)."
        )


def check_data_dir(data: DictConfig | dict) -> None:
    """A dataset read from ``data.data_dir`` (set, not null) without ``data.download=true`` needs that
    folder to exist and not be empty. (Datasets that read no files keep ``data_dir: null``.)"""
    data_dir = data.get("data_dir")
    if data_dir is None or bool(data.get("download", False)):
        return
    root = Path(str(data_dir)).expanduser()
    can_download = "download" in data
    fetch = ", or set data.download=true to fetch the dataset" if can_download else ""
    if not root.is_dir():
        why = " and data.download=false" if can_download else ""
        raise ConfigError(
            f"data.data_dir={root} does not exist{why}; set data.data_dir to the dataset's folder{fetch}."
        )
    if next(root.iterdir(), None) is None:
        raise ConfigError(f"data.data_dir={root} is an empty folder; set data.data_dir to the dataset's folder{fetch}.")


@functools.cache
def parameter_types(target: str) -> dict[str, Any]:
    """``{parameter: annotation}`` of the class or function ``target`` names (a class: its ``__init__`` and
    those of its bases, which receive the ``**kwargs``; the first annotation of a name wins), resolved;
    ``{}`` when the target cannot be found or its annotations cannot be resolved."""
    try:
        obj = get_object(target)
    except Exception:  # an unknown target fails with Hydra's own message at instantiation
        return {}
    owners = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if isinstance(obj, type) else [obj]
    found: dict[str, Any] = {}
    for fn in owners:
        for name, hint in _hints(fn).items():
            found.setdefault(name, hint)
    found.pop("return", None)
    return found


def _hints(fn: Any) -> dict[str, Any]:
    """``typing.get_type_hints(fn)``; where one annotation names something its module imports only for type
    checkers (Lightning's ``WandbLogger``: ``Run``), each of the others resolved on its own."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    out: dict[str, Any] = {}
    namespace = getattr(fn, "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            out[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        except Exception:  # this one's forward reference: no rule for this parameter
            continue
    return out


def takes_none(annotation: Any) -> bool:
    """The annotation admits None (``X | None``, ``Optional[X]``, ``Any``, ``None``)."""
    if annotation is Any or annotation is type(None) or annotation is None:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(takes_none(a) for a in typing.get_args(annotation))
    return typing.get_origin(annotation) is typing.Literal and None in typing.get_args(annotation)


def _target_nodes(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """``(key, node)`` of every node of ``node`` (itself included) that names a ``_target_``."""
    target = node._get_node("_target_") if "_target_" in node else None
    if target is not None and not target._is_interpolation() and isinstance(target._value(), str):
        yield prefix.rstrip("."), node
    for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
        child = node._get_node(key)
        full = f"{prefix}{key}"
        if full != "hydra" and isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            yield from _target_nodes(child, f"{full}.")


def check_parameters(cfg: DictConfig, overridden: set[str] | frozenset[str] = frozenset()) -> None:
    """The values of every ``_target_`` node against its target's parameter annotations, read from the code
    (one source: the constructor checks the same ``Literal``): a parameter annotated ``Literal[...]`` takes
    one of those values (``loss.distance=banana`` stops here, not after the data has loaded), and one whose
    annotation does not admit None is not set to null by an override (``overridden``: the keys the command
    line sets; a null in a config file is that class's documented default, e.g. ``data.mean``)."""
    for path, node in _target_nodes(cfg):
        types_ = parameter_types(str(node._get_node("_target_")._value()))
        if not types_:
            continue
        for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
            annotation = types_.get(str(key))
            child = node._get_node(key)
            if annotation is None or str(key).startswith("_") or child is None or child._is_interpolation():
                continue
            if isinstance(child, DictConfig) and not child._is_none():
                continue
            full = f"{path}.{key}" if path else str(key)
            if child._is_none():
                if full in overridden and not takes_none(annotation):
                    name = str(node._get_node("_target_")._value()).rsplit(".", 1)[-1]
                    raise ConfigError(
                        f"{full} cannot be null ({name} needs a value for {key}); set a value or drop the override."
                    )
                continue
            allowed = choices_of(annotation)
            value = child._value()
            if allowed is not None and not isinstance(value, list | tuple) and value not in allowed:
                shown = list(dict.fromkeys(str(a) for a in allowed if a is not None))  # 16 and "16": once
                words, first = ", ".join(shown), shown[0]
                raise ConfigError(f"{full} must be one of {words}, got {value!r}; set e.g. {full}={first}.")


def _choice(cfg: DictConfig, group: str) -> str:
    """The group option as typed (``sampler=semi_hard``), or its class name outside a Hydra run."""
    try:
        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError, AttributeError):
        return str(cfg[group].get("_target_", "?")).rsplit(".", 1)[-1]


def _cls(node: Any) -> type | None:
    target = node.get("_target_") if node is not None else None
    try:
        return get_class(target) if target else None
    except Exception:  # an unknown target fails with Hydra's own message at instantiation
        return None


def _data_capabilities(data_cls: type | None) -> type[DataCapabilities]:
    """The class whose declared capabilities apply to ``data=``: ``data_cls`` when it declares them
    (every contrastlab datamodule does), else :class:`DataCapabilities`' defaults."""
    from contrastlab.data.base import DataCapabilities

    return data_cls if data_cls is not None and issubclass(data_cls, DataCapabilities) else DataCapabilities


def check_negatives(cfg: DictConfig) -> None:
    """Objective x sampler x loss x data combinations of the triplet / memory-bank / ANN strategies:
    the sampler must be of the objective's declared ``sampler_kind`` (:mod:`contrastlab.negatives.kinds`)."""
    from contrastlab.negatives.kinds import Memory
    from contrastlab.objectives.base import ContrastiveObjective

    objective, sampler, loss = (cfg.get(k) or {} for k in ("objective", "sampler", "loss"))
    data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
    obj_cls, sampler_cls, loss_cls = _cls(objective), _cls(sampler), _cls(loss)
    obj, smp = _choice(cfg, "objective"), _choice(cfg, "sampler")
    if float(loss.get("margin", 0.0) or 0.0) < 0:
        raise ConfigError(f"loss.margin must be >= 0, got {loss.margin}; set e.g. loss.margin=0.2.")
    if obj_cls is None or not issubclass(obj_cls, ContrastiveObjective) or sampler_cls is None:
        return
    consumes = obj_cls.consumes  # "candidates" (InfoNCE), "triplets" or "pairs"
    if consumes is None:
        return
    kind = obj_cls.sampler_kind
    if not issubclass(sampler_cls, kind):
        raise ConfigError(f"sampler={smp} does not serve objective={obj} ({consumes}); set sampler={kind.choices}.")
    if loss_cls is not None and getattr(loss_cls, "consumes", "candidates") != consumes:
        fix = {"triplets": "triplet", "pairs": "clip (or siglip)"}.get(consumes, "nt_xent (or info_nce)")
        raise ConfigError(f"loss={_choice(cfg, 'loss')} does not fit objective={obj}; set loss={fix}.")
    views = int(data.get("views", 2) or 2)
    strategy = sampler.get("strategy", sampler.get("mining"))
    if consumes == "triplets":
        positives = objective.get("positives", "labels")
        if positives == "labels" and not _data_capabilities(_cls(data)).labels_possible():
            raise ConfigError(
                f"objective.positives=labels but data={_choice(cfg, 'data')} has no labels; "
                "set objective.positives=views."
            )
        if positives == "views" and views < 2:
            raise ConfigError(f"objective.positives=views needs two views per item, got {views}; set data.views=2.")
        pk = data.get("batch_sampler")
        if positives == "labels" and pk is not None and int(pk.get("k", 2)) < 2:
            raise ConfigError(
                f"data.batch_sampler.k={pk.k} puts one item per class in a batch, so sampler={smp} finds no "
                "positive; set data.batch_sampler.k to at least 2 (or objective.positives=views)."
            )
        if bool(loss.get("soft_margin", False)) and strategy == "batch_all":
            raise ConfigError(
                "loss.soft_margin=true with batch-all mining would score all O(N^3) triplets; "
                "set loss.soft_margin=false or sampler=batch_hard."
            )
    if "size" in sampler and issubclass(sampler_cls, Memory):
        rows = int(data.get("batch_size", 1)) * (views if consumes == "triplets" else 2) * _world(trainer)
        if int(sampler.size) < rows:
            raise ConfigError(
                f"sampler.size={sampler.size} is smaller than the {rows} rows enqueued per step "
                f"(data.batch_size x views x devices); set sampler.size to at least {rows}."
            )
    if "rank_max" in sampler and not 1 <= int(sampler.rank_min) <= int(sampler.rank_max):
        raise ConfigError(
            f"sampler.rank_min={sampler.rank_min} and sampler.rank_max={sampler.rank_max} must satisfy "
            "1 <= rank_min <= rank_max; set them to a window of neighbour ranks such as 3 and 30."
        )


def check_two_towers(cfg: DictConfig) -> None:
    """Two-tower objectives (CLIP, text bi-encoder) against data, loss, sampler, towers and callbacks,
    and image–caption / text-pair data against the other objectives."""
    from contrastlab.evaluation.collapse import CollapseMonitor
    from contrastlab.evaluation.plot_callback import EmbeddingPlotCallback
    from contrastlab.objectives.biencoder import BiEncoder
    from contrastlab.objectives.clip import CLIP, DualEncoderObjective

    obj_cls, data_cls = _cls(cfg.get("objective")), _cls(cfg.get("data"))
    loss_cls, sampler_cls = _cls(cfg.get("loss")), _cls(cfg.get("sampler"))
    if obj_cls is None or data_cls is None:
        return
    obj, dat = _choice(cfg, "objective"), _choice(cfg, "data")
    caps = _data_capabilities(data_cls)
    text_pairs, images = caps.has_text_pairs, caps.has_images
    captions = caps.has_captions and images
    if not issubclass(obj_cls, DualEncoderObjective):
        if text_pairs:
            raise ConfigError(
                f"data={dat} holds text pairs, which objective={obj} cannot train on; set objective=biencoder."
            )
        if captions:
            raise ConfigError(
                f"data={dat} serves image–caption pairs, which objective={obj} cannot train on; set objective=clip."
            )
        return
    if issubclass(obj_cls, CLIP) and not captions:
        raise ConfigError(
            f"objective={obj} trains on image–caption pairs and data={dat} has no captions; "
            "set data=shapes_captions (or data=image_text_csv data.path=<your table>)."
        )
    if issubclass(obj_cls, BiEncoder) and not text_pairs:
        raise ConfigError(f"objective={obj} trains on text pairs and data={dat} has none; set data=text_pairs.")
    if issubclass(obj_cls, CLIP) and cfg.get("encoder") is None:
        raise ConfigError(f"objective={obj} needs an image tower; set encoder=small_cnn (or encoder=timm).")
    if cfg.get("text_encoder") is None:
        raise ConfigError(f"objective={obj} needs a text tower; set text_encoder=transformer (or text_encoder=hf).")
    if loss_cls is None or getattr(loss_cls, "consumes", None) != "pairs":
        raise ConfigError(
            f"objective={obj} scores matched pairs and loss={_choice(cfg, 'loss')} does not; "
            "set loss=clip (or loss=siglip)."
        )
    if sampler_cls is not None and not issubclass(sampler_cls, obj_cls.sampler_kind):
        raise ConfigError(f"objective={obj} takes its negatives from the batch; set sampler=in_batch.")
    if not images:  # these callbacks embed validation images
        for name, cb in (cfg.get("callbacks") or {}).items():
            cb_cls = _cls(cb)
            if cb_cls is not None and issubclass(cb_cls, CollapseMonitor | EmbeddingPlotCallback):
                raise ConfigError(f"callbacks.{name} embeds images and data={dat} has none; set callbacks.{name}=null.")


def check_sync_batchnorm(cfg: DictConfig) -> None:
    """``trainer.sync_batchnorm=true`` under DDP turns every BatchNorm into torch's SyncBatchNorm,
    which has no CPU implementation (it fails in the first training step on CPU tensors)."""
    trainer = cfg.get("trainer") or {}
    if not bool(trainer.get("sync_batchnorm", False)) or str(trainer.get("accelerator", "")) != "cpu":
        return
    strategy = trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    if _world(trainer) > 1 or "ddp" in target.lower():
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm has no CPU kernel); "
            "set trainer.sync_batchnorm=false on CPU (or trainer=ddp on GPUs)."
        )
