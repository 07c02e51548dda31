"""Value checks of loss inputs that must read tensors on the host (index ranges, a tensor temperature's sign,
an excluded key that is also a positive).

On a GPU each such read waits for every queued kernel, so these checks are off by default and a training
step reads nothing back. Turn them on to debug a new sampler or loss: the environment variable
``CONTRASTLAB_CHECK_INPUTS=1``, :func:`set_checks`, or ``with checking_inputs(): ...``. Checks of shapes,
dtypes and Python numbers (host metadata, free) always run, and so do the checks of module arguments at
construction.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_enabled = os.environ.get("CONTRASTLAB_CHECK_INPUTS", "").strip().lower() in ("1", "true", "yes", "on")


def enabled() -> bool:
    """Whether the value checks that read tensors on the host run."""
    return _enabled


def set_checks(on: bool) -> None:
    """Turn the value checks on or off for the whole process."""
    global _enabled
    _enabled = bool(on)


@contextmanager
def checking_inputs(on: bool = True) -> Iterator[None]:
    """Run the block with the value checks on (or off); the previous setting is restored afterwards."""
    previous = _enabled
    set_checks(on)
    try:
        yield
    finally:
        set_checks(previous)
