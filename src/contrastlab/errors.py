"""The exceptions every contrastlab layer raises for bad input or an explained run failure.

* :class:`BadInputError`: the user asked for something that cannot work (a config value, a data
  folder, a checkpoint of another objective, weights that are not cached). The command-line boundary
  (:mod:`contrastlab.cli.boundary`) prints its message as one line and exits with status 2.
* :class:`RunFailure`: a run that started correctly and stopped for a reason one sentence explains
  (too many non-finite steps, a full disk); one line and exit status 1.

Subclasses keep a familiar builtin base as well (``ValueError``, ``OSError``, ...) so ``except
ValueError`` code keeps working. This module imports nothing from contrastlab: every layer may use it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
#: exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM, as a shell reports it)
EXIT_PREEMPTED = 143


class ContrastlabError(Exception):
    """Base of every error contrastlab raises on purpose."""


class BadInputError(ContrastlabError):
    """Bad input: the message is one sentence naming what to change."""


class RunFailure(ContrastlabError):
    """A run stopped for a reason its message explains in one sentence."""


class ContrastlabWarning(UserWarning):
    """Base of every warning contrastlab issues: something a researcher should see that does not stop the run
    (skipped images or steps, a collapsed embedding, W&B offline). The test suite turns these into errors
    unless a test expects one."""


class ConfigError(BadInputError, ValueError):
    """A config value or combination that cannot work; the message names the override to change."""


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` annotation allows (``Literal[...] | None`` too, None included), or None
    when the annotation is not a choice."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    parts = [choices_of(a) if a is not type(None) else (None,) for a in get_args(annotation)]
    if parts and all(p is not None for p in parts) and any(p != (None,) for p in parts):
        return tuple(v for p in parts for v in p)  # type: ignore[union-attr]
    return None


def check_choice(value: Any, choices: Any, key: str) -> Any:
    """``value`` when it is one of ``choices`` (a ``Literal[...]`` type, the parameter's annotation, so that
    the start-up rules read the same list), else a :class:`ConfigError` naming ``key`` and the choices."""
    allowed = choices_of(choices)
    if allowed is None:
        raise TypeError(f"check_choice needs a Literal[...] annotation, got {choices!r}")
    if value not in allowed:
        words = ", ".join(str(a) for a in allowed)
        raise ConfigError(f"{key} must be one of {words}, got {value!r}; set e.g. {key}={allowed[0]}.")
    return value


def unwrap(err: BaseException) -> BaseException:
    """The error a constructor raised, out of Hydra's ``InstantiationException`` (which ``instantiate``
    wraps around it, e.g. ``PretrainedWeightsError`` from ``TimmEncoder``); other errors unchanged."""
    while type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    return err


def is_bad_input(err: BaseException) -> bool:
    return isinstance(unwrap(err), BadInputError)


def is_run_failure(err: BaseException) -> bool:
    return isinstance(unwrap(err), RunFailure)
