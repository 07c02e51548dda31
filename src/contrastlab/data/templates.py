"""Prompt-template sets for zero-shot classification: a class name goes where the ``{}`` is.

A ``templates`` setting is a list of templates, the name of a built-in set, or a text file with one
template per line (blank lines and lines starting with ``#`` are skipped):

* ``default``: a small general set (``"a photo of a {}."``, ...);
* ``openai_imagenet``: the 80 templates OpenAI used for ImageNet zero-shot classification
  (``"a bad photo of a {}."``, ...), the set clip_benchmark reports ImageNet with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from contrastlab.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
)
BUILT_IN = {"default": None, "openai_imagenet": ASSETS / "openai_imagenet_templates.txt"}


class TemplatesError(ConfigError):
    """A templates setting that names no set or file, or holds a template without ``{}``."""


def read_templates(path: Path, key: str = "templates") -> list[str]:
    """The templates of a text file, one per line (blank and ``#`` lines skipped)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    out = [line for line in lines if line and not line.startswith("#")]
    if not out:
        raise TemplatesError(f"{key}={path} holds no template; write one template per line, e.g. 'a photo of a {{}}.'")
    return out


def resolve_templates(value: str | Sequence[str] | None, key: str = "templates") -> list[str]:
    """``value`` as a list of templates: a list as it is, a built-in set's name, or a file path;
    None gives the ``default`` set. Every template must hold ``{}``."""
    if value is None:
        out = list(DEFAULT_TEMPLATES)
    elif isinstance(value, str):
        if value in BUILT_IN:
            path = BUILT_IN[value]
            out = list(DEFAULT_TEMPLATES) if path is None else read_templates(path, key)
        elif "{}" in value:  # one template given as a string
            out = [value]
        else:
            path = Path(value).expanduser()
            if not path.is_file():
                names = ", ".join(BUILT_IN)
                raise TemplatesError(
                    f"{key}={value} is neither a template set ({names}) nor a file; set {key} to one of those, "
                    "a file with one template per line, or a list such as ['a photo of a {}.']."
                )
            out = read_templates(path, key)
    else:
        out = [str(t) for t in value]
    if not out:
        raise TemplatesError(f"{key} is empty; give at least one template such as 'a photo of a {{}}.'")
    for t in out:
        if "{}" not in t:
            raise TemplatesError(f"{key}: template '{t}' has no '{{}}' for the class name; add one.")
    return out
