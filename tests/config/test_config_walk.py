"""The error boundary holds by construction: a generated walk over every leaf of every objective's config.

For each objective (simclr, triplet, clip, biencoder) the composed ``conf/train.yaml`` is walked, and every
leaf key is set on the command line to a value of the wrong kind (text where the default is a number, a
number where it is text or a list, ``yes`` where it is true/false) and, for numbers, to each side of its
declared range (``NUMBER_RULES``: zero for a learning rate, -1 for a size, 1.5 for a probability or a count,
2**32 for a seed). Every case must end in exit status 2 with one ``error:`` line naming the key and no
traceback, within 20 s, and at start-up: the runner replaces what follows the start-up rules with a
sentinel, so a case that gets past them (a run that would train on a nonsense value) fails the test.

All cases run through the real entry point (``contrastlab.cli.train.main``, argv, Hydra and the boundary)
in two subprocesses (``conftest.run_train_cases``, which tests/cli/test_reliability_cli.py uses too); a key
shared by several objectives with a default of the same kind is tried once (under the first objective that has
it).
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from conftest import run_train_cases
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from contrastlab.config import CONF_DIR, checks, values
from contrastlab.errors import choices_of

#: the composition walked per objective: conf/train.yaml with these groups (the combinations of
#: conf/experiment/, without their value changes); biencoder's text pairs hold no images, so the two
#: callbacks that embed images are off, as in experiment=biencoder_text_pairs
OBJECTIVES: dict[str, list[str]] = {
    "simclr": [],
    "triplet": ["objective=triplet"],
    "clip": ["objective=clip", "data=shapes_captions"],
    "biencoder": ["objective=biencoder", "callbacks.collapse=null", "callbacks.embedding_plot=null"],
}

#: the only keys not walked besides those whose default is null (which take any value): Hydra's class
#: paths (the registry; a wrong one fails when instantiated) and the run folder's name (any text or number).
#: The start-up rules' own "takes anything" list (values.ANY_VALUE) may not grow beyond this one.
NOT_WALKED: dict[str, str] = {
    "*._target_": "a class path, checked by Hydra when it instantiates it",
    "_target_": "a class path, checked by Hydra when it instantiates it",
    "task_name": "names the run folder: any text or number",
}

#: values set where the default is of each kind: a value of a kind the key does not take
WRONG_KIND: dict[str, Any] = {"number": "abc", "text": 7, "bool": "yes", "list": 7}


def composed_leaves(overrides: list[str]) -> dict[str, Any]:
    """``{key: default}`` of every leaf of ``conf/train.yaml`` composed with ``overrides``, interpolations
    resolved (``${hydra:...}`` too: the Hydra config is installed while walking); lists are leaves."""
    out: dict[str, Any] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
            full, child = f"{prefix}{key}", node._get_node(key)
            if full == "hydra":
                continue
            value = OmegaConf.select(node, str(key), throw_on_missing=False)
            if isinstance(value, DictConfig) and not child._is_interpolation():
                walk(value, f"{full}.")
            else:
                out[full] = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            walk(cfg, "")
        finally:
            HydraConfig.instance().cfg = None  # leave no global state to other tests
    return out


def out_of_range(rule: values.Range) -> list[float]:
    """Numbers just outside ``rule``: below its lower bound, above its upper bound, and a fraction
    where it takes whole numbers (none of them one of its special values)."""
    cases: list[float] = []
    if rule.lo is not None:
        below = rule.lo if rule.lo_open else rule.lo - (1 if rule.whole else 0.5)
        while below in rule.also:
            below -= 1
        cases.append(below)
    if rule.hi is not None:
        cases.append(rule.hi if rule.hi_open else rule.hi + (1 if rule.whole else 0.5))
    if rule.whole:
        cases.append((rule.lo if rule.lo is not None else 0) + 0.5)
    return cases


def as_arg(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


#: leaves whose default is a value but whose parameter takes null (its annotation admits None, e.g.
#: Lightning's ``check_val_every_n_epoch: int | None``): ``key=null`` must pass the start-up rules. Every other
#: walked leaf set to null must stop there with one line. test_null_takers_are_what_the_annotations_say keeps
#: this list equal to what the code's annotations say.
NULL_TAKERS: frozenset[str] = frozenset(
    {
        "trainer.max_epochs",  # Lightning: 1000 epochs unless max_steps is set
        "trainer.precision",  # Lightning's default, 32-true
        "trainer.log_every_n_steps",
        "trainer.check_val_every_n_epoch",  # validate every val_check_interval steps instead
        "trainer.num_sanity_val_steps",
        "trainer.deterministic",
        "trainer.enable_model_summary",
        "trainer.enable_progress_bar",
        "logger.tags",
        "callbacks.model_checkpoint.dirpath",
        "callbacks.model_checkpoint.filename",
        "callbacks.model_checkpoint.monitor",  # keep last.ckpt only
        "callbacks.model_checkpoint.save_last",
        "callbacks.step_checkpoint.dirpath",
        "callbacks.lr_monitor.logging_interval",
        "callbacks.collapse.max_samples",  # every validation sample
        "callbacks.embedding_plot.dirpath",
        "callbacks.embedding_plot.max_points",
        "callbacks.embedding_plot.umap_epochs",
        "objective.collapse_threshold",  # the triplet collapse guard off
    }
)


def annotation_of(cfg: DictConfig, key: str) -> Any:
    """The annotation of the parameter ``key`` sets (its node's ``_target_``), or None for a plain setting."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return checks.parameter_types(str(target)).get(name) if target else None


def composed(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def walk_cases() -> list[tuple[str, list[str], str]]:
    """(objective, overrides, key the one error line must name) for every walked leaf of every objective:
    a value of the wrong kind, null (unless the key is one of :data:`NULL_TAKERS`), a word that is none of
    the choices where the parameter is a ``Literal``, and numbers outside the key's range."""
    cases, seen = [], set()
    for name, base in OBJECTIVES.items():
        cfg = composed(base)
        for key, default in composed_leaves(base).items():
            kind = values.kind(default)
            if kind is None or any(fnmatchcase(key, p) for p in NOT_WALKED) or (key, kind) in seen:
                continue
            seen.add((key, kind))  # the same key and kind under another objective: the same rules apply
            assert kind in WRONG_KIND, f"{name}: {key}={default!r} is a {kind}, which the walk cannot vary"
            cases.append((name, [*base, f"{key}={WRONG_KIND[kind]}"], key))
            if key not in NULL_TAKERS:
                cases.append((name, [*base, f"{key}=null"], key))
            if kind == "text" and choices_of(annotation_of(cfg, key)) is not None:
                cases.append((name, [*base, f"{key}=banana"], key))
            if kind == "number":
                rule = values.number_rule(key)
                assert rule is not None, f"{key}={default} (objective={name}) has no range in values.NUMBER_RULES"
                assert rule.lo is not None, f"{key}: a rule without a lower bound lets any negative number through"
                assert rule.accepts(float(default)), f"{key}={default}: the default is outside {rule.words()}"
                cases += [(name, [*base, f"{key}={as_arg(v)}"], key) for v in out_of_range(rule)]
    return cases


#: overrides of another kind than the default that are legitimate: the rules must let them through
ACCEPTED: list[list[str]] = [
    ["trainer.devices=auto"],
    ["trainer.devices=[0]"],
    ["trainer.precision=16"],
    ["trainer.precision=bf16-mixed"],
    ["trainer.max_epochs=-1"],
    ["trainer.check_val_every_n_epoch=null"],
    ["callbacks.knn=null"],  # the checkpoint then keeps last.ckpt only (tests/config/test_build.py)
    ["+trainer.max_steps=-1"],
    ["logger=csv", "logger.version=3"],
    ["optimizer.lr=1"],  # an int where the default is a float
    ["debug=fast", "trainer.limit_train_batches=0.5"],  # a fraction where debug=fast sets a count
]


def null_taker_controls() -> list[list[str]]:
    """``key=null`` for each of :data:`NULL_TAKERS`, under the first objective whose config has the key."""
    out, left = [], set(NULL_TAKERS)
    for base in OBJECTIVES.values():
        for key in sorted(left & set(composed_leaves(base))):
            out.append([*base, f"{key}=null"])
            left.discard(key)
    assert not left, f"NULL_TAKERS names keys no objective has: {sorted(left)}"
    return out


def run_cases(cases: list[list[str]], tmp_path: Path) -> list[dict]:
    """Each case through the real entry point, stopped after the start-up rules (conftest.CASE_RUNNER)."""
    return run_train_cases(cases, tmp_path, workers=2, startup_only=True)


def test_every_leaf_of_every_objective_fails_at_start_up_with_one_line(tmp_path: Path) -> None:
    cases = walk_cases()
    controls = [base for base in OBJECTIVES.values()] + ACCEPTED + null_taker_controls()
    assert len(cases) >= 350, len(cases)  # the walk found the configs' leaves (391 when written)
    assert sum(args[-1].endswith("=null") for _, args, _ in cases) >= 100  # null where a value is needed
    assert sum(args[-1].endswith("=banana") for _, args, _ in cases) >= 10  # a word none of the choices
    results = run_cases([args for _, args, _ in cases] + controls, tmp_path)
    failures = []
    for (name, args, key), result in zip(cases, results, strict=False):
        output = result["out"] + result["err"]
        lines = [ln for ln in result["err"].splitlines() if ln.startswith("error:")]
        if result["code"] != 2 or len(lines) != 1 or key not in lines[0] or "Traceback" in output:
            failures.append(f"objective={name} {args[-1]}: exit {result['code']!r}, {lines}\n{output[-1500:]}")
    for args, result in zip(controls, results[len(cases) :], strict=True):
        if result["code"] != "passed the start-up rules":
            failures.append(f"{args} must pass the start-up rules: exit {result['code']!r}\n{result['err'][-1500:]}")
    assert not failures, f"{len(failures)} of {len(results)} cases:\n" + "\n".join(failures[:20])
    # nothing got as far as a run: no checkpoints, no metrics
    assert not list(tmp_path.glob("runs*/*/checkpoints")) and not list(tmp_path.glob("runs*/*/metrics.json"))


def test_null_takers_are_what_the_annotations_say() -> None:
    """:data:`NULL_TAKERS` lists exactly the walked leaves whose parameter annotation admits None: a new
    ``X | None`` parameter is a conscious choice, written down here."""
    found = set()
    for base in OBJECTIVES.values():
        cfg = composed(base)
        for key, default in composed_leaves(base).items():
            annotation = annotation_of(cfg, key)
            if default is not None and annotation is not None and checks.takes_none(annotation):
                found.add(key)
    assert found == set(NULL_TAKERS)


def test_the_walk_skips_only_its_short_list() -> None:
    """The rules' own "takes anything" keys are walked-out here too, and no more keys than listed."""
    assert len(NOT_WALKED) <= 3
    assert set(values.ANY_VALUE) <= set(NOT_WALKED)


# --- every number in conf/ has a range, and the ranges are what their words say ------------------------

#: the config groups conf/train.yaml composes from (eval/, format/, hparams_search/, hydra/ are not run configs)
TRAIN_GROUPS = [
    "data",
    "data/batch_sampler",
    "augment",
    "encoder",
    "text_encoder",
    "head",
    "objective",
    "loss",
    "sampler",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "experiment",
]


def conf_values() -> list[tuple[str, str, Any]]:
    """(file, key, value) of every value set in a train group's YAML file or in train.yaml."""
    conf = Path(CONF_DIR)
    out: list[tuple[str, str, Any]] = []

    def walk(node: DictConfig, prefix: str, where: str) -> None:
        for key in node.keys():  # noqa: SIM118 (a DictConfig: keys() does not resolve values)
            child = node._get_node(key)
            if key == "defaults" or child._is_interpolation():
                continue
            if isinstance(child, DictConfig) and not child._is_none():
                walk(child, f"{prefix}{key}.", where)
            else:
                out.append((where, f"{prefix}{key}", child._value() if not isinstance(child, ListConfig) else []))

    walk(OmegaConf.load(conf / "train.yaml"), "", "train.yaml")
    for group in TRAIN_GROUPS:
        files = sorted((conf / group).glob("*.yaml"))
        assert files, group
        for path in files:
            is_global = "@package _global_" in path.read_text()
            walk(OmegaConf.load(path), "" if is_global else group.replace("/", ".") + ".", f"{group}/{path.name}")
    return out


def test_every_number_in_conf_has_a_range_its_value_satisfies() -> None:
    found = conf_values()
    numbers = [(where, key, v) for where, key, v in found if values.kind(v) == "number"]
    assert len(numbers) > 100
    for where, key, value in numbers:
        rule = values.number_rule(key)
        assert rule is not None, f"{where}: {key}={value} has no range in values.NUMBER_RULES"
        assert rule.accepts(float(value)), f"{where}: {key}={value} is outside its own rule, {rule.words()}"
    # a rule meant for numbers never catches a flag, a choice or a list that a file sets
    for where, key, value in found:
        kind = values.kind(value)
        if kind in ("bool", "text") and values.number_rule(key) is not None:
            assert kind in values.kinds_of(key, "number"), f"{where}: {key}={value!r} is caught by a number rule"


@pytest.mark.parametrize(("pattern", "rule"), values.NUMBER_RULES, ids=[p for p, _ in values.NUMBER_RULES])
def test_each_range_accepts_its_bounds_and_refuses_beyond_them(pattern: str, rule: values.Range) -> None:
    inside = [float(rule.sample()), *(float(v) for v in rule.also), *rule.choices]
    if rule.example is not None:
        inside.append(float(rule.example))
    if rule.lo is not None and not rule.lo_open:
        inside.append(rule.lo)
    if rule.hi is not None and not rule.hi_open:
        inside.append(rule.hi)
    for v in inside:
        assert rule.accepts(v), f"{pattern}: {v} should be {rule.words()}"
    outside = [math.nan, math.inf, -math.inf, *out_of_range(rule)]
    if rule.choices:
        outside += [max(rule.choices) + 1, 7]
    for v in outside:
        assert not rule.accepts(v), f"{pattern}: {v} is not {rule.words()}"


def test_range_words() -> None:
    assert values.Range(lo=0, lo_open=True).words() == "> 0"
    assert values.Range(lo=0).words() == ">= 0"
    assert values.Range(lo=0, hi=1).words() == "in [0, 1]"
    assert values.Range(lo=0, hi=1, lo_open=True, hi_open=True).words() == "in (0, 1)"
    assert values.Range(lo=1, whole=True).words() == "a whole number >= 1"
    assert (
        values.Range(lo=1, whole=True, also=(-1,), note="no limit").words() == "a whole number >= 1 (or -1: no limit)"
    )
    assert values.Range(choices=(16, 32)).words() == "one of 16, 32"
    assert values.Range().words() == "a finite number"


def test_rules_without_hydra_check_numbers_only() -> None:
    """Outside a Hydra run (a config built by hand) the ranges still hold; kinds need the run's defaults."""
    cfg = OmegaConf.create({"loss": {"temperature": "warm"}, "augment": {"hue": "yes"}})
    with pytest.raises(values.ConfigError, match=r"loss.temperature must be > 0, got 'warm'; set e.g."):
        values.check_values(cfg)
    values.check_values(OmegaConf.create({"augment": {"hue": "yes", "crop_ratio": [0.8, 1.25]}}))


def test_choices_and_null_read_from_annotations() -> None:
    """What the start-up rules read from a parameter's annotation: its choices and whether it takes null."""
    from typing import Literal

    assert choices_of(Literal["a", "b"]) == ("a", "b")
    assert choices_of(Literal["a"] | Literal[1, 2] | None) == ("a", 1, 2, None)
    assert choices_of(Literal["all"] | bool) is None and choices_of(str) is None and choices_of(None) is None
    assert checks.takes_none(int | None) and checks.takes_none(Any) and checks.takes_none(Literal["a", None])
    assert not checks.takes_none(int) and not checks.takes_none(Literal["a"]) and not checks.takes_none(list[int])
    with pytest.raises(values.ConfigError, match=r"^loss\.distance must be one of cosine, euclidean, got 'x'; set e"):
        from contrastlab.errors import check_choice

        check_choice("x", Literal["cosine", "euclidean"], "loss.distance")
