"""The command-line error boundary: bad input ends a run with one sentence and exit status 2.

A Hydra entry point wrapped by :func:`run_main` reports

* Hydra's own composition errors (an unknown group option, an unknown key, an override that does not
  parse) as one line with the nearest valid name: ``unknown encoder option 'smal_cnn'; did you mean
  'small_cnn'? options: resnet18_cifar, small_cnn, timm``;
* every :class:`~contrastlab.errors.BadInputError` (``ConfigError``, ``DataDirError``, ...) as its own
  one-line message, and every :class:`~contrastlab.errors.RunFailure` likewise with exit status 1;

on stderr, prefixed ``error:``, exit status 2, no traceback. ``HYDRA_FULL_ERROR=1`` shows the full
traceback instead. Any other exception keeps its traceback (a bug, not bad input).

Only light modules are imported here: Hydra's errors are reported before torch or Lightning load.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

from contrastlab.errors import EXIT_BAD_INPUT, EXIT_FAILED, is_bad_input, is_run_failure, unwrap

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "exit_if_known", "is_bad_input", "message_for", "run_main", "run_task"]


def suggest(word: str, options: Iterable[str]) -> str | None:
    """The option closest to ``word`` (difflib ratio >= 0.6), or None."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    best = suggest(word, options)
    return f"; did you mean '{best}'?" if best else ""


def one_line(text: str) -> str:
    """Join a message's lines into one (DataLoader worker errors carry the worker's traceback: keep
    only the error's own last line then)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines) or any(ln.startswith("Original Traceback") for ln in lines):
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    return " ".join(lines)


def hydra_message(err: BaseException) -> str | None:
    """One sentence for a Hydra composition / override error, or None for other errors."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        options = sorted(err.options)
        where = f"{group} option" if group else "config"
        return f"unknown {where} '{option}'{_did_you_mean(option, options)} options: {', '.join(options)}"
    if isinstance(err, OverrideParseException):
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if not ln.startswith(("Error parsing", "See https"))), "")
        why = why.split(" expecting ")[0]
        return (
            f"cannot parse the override '{err.override}'"
            + (f": {why}" if why else "")
            + "; see https://hydra.cc/docs/advanced/override_grammar/basic/"
        )
    if isinstance(err, ConfigCompositionException):
        cause = err.__cause__
        full_key = getattr(cause, "full_key", None)
        parent = getattr(cause, "parent_node", None)
        if full_key and "not in struct" in str(cause):
            key = str(getattr(cause, "key", full_key.rsplit(".", 1)[-1]))
            prefix = full_key[: -len(key)] if full_key.endswith(key) else ""
            options = [str(k) for k in parent] if hasattr(parent, "keys") else []
            best = suggest(key, options)
            hint = f"; did you mean '{prefix}{best}'?" if best else f"; keys there: {', '.join(sorted(options))}"
            return f"unknown config key '{full_key}'{hint} (to add a new key, write +{full_key}=...)"
        return one_line(str(err) + (f" {cause}" if cause is not None else ""))
    return None


def message_for(err: BaseException) -> str | None:
    """The one-line message for a bad-input error or a known run failure, None for anything else."""
    msg = hydra_message(err)
    if msg is not None:
        return msg
    if is_bad_input(err) or is_run_failure(err):
        return one_line(str(unwrap(err)))
    return None


def report(message: str, stream: Any = None) -> None:
    (stream or sys.stderr).write(f"error: {message}\n")
    (stream or sys.stderr).flush()


def full_error_requested() -> bool:
    """The user set ``HYDRA_FULL_ERROR`` (as opposed to :func:`run_main` setting it)."""
    value = os.environ.get("HYDRA_FULL_ERROR", "")
    return value not in ("", "0") and os.environ.get("CONTRASTLAB_HYDRA_FULL_ERROR") != "set-by-run_main"


def exit_if_known(err: BaseException) -> None:
    """Inside the task function: a known error -> its line on stderr and ``SystemExit`` (2 for bad
    input, 1 for a known run failure), before Hydra adds its own "Error executing job" line."""
    msg = None if full_error_requested() else message_for(err)
    if msg is not None:
        report(msg)
        raise SystemExit(EXIT_FAILED if is_run_failure(err) else EXIT_BAD_INPUT) from None


def run_task(task: Callable[[Any], Any], cfg: Any) -> Any:
    """``task(cfg)`` inside a Hydra task function; a known error ends with its one line (:func:`exit_if_known`)."""
    try:
        return task(cfg)
    except Exception as err:
        exit_if_known(err)
        raise


def run_main(hydra_main: Callable[[], Any]) -> Any:
    """Call a ``@hydra.main`` function; bad input -> one line on stderr and ``SystemExit(2)``; a known
    run failure (:class:`~contrastlab.errors.RunFailure`) -> one line and ``SystemExit(1)``.

    Hydra prints (and exits 1 on) its own errors unless ``HYDRA_FULL_ERROR`` is set, so it is set
    here for the call and the errors are reported by this function instead; a user who set it gets
    the full traceback as before. Errors raised inside the task function are best reported there
    (:func:`exit_if_known`)."""
    user_full = full_error_requested()
    if not user_full:
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ["CONTRASTLAB_HYDRA_FULL_ERROR"] = "set-by-run_main"
    try:
        return hydra_main()
    except Exception as err:
        if user_full:
            raise
        exit_if_known(err)
        raise
    finally:
        if not user_full:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop("CONTRASTLAB_HYDRA_FULL_ERROR", None)
