"""Config: where the YAML config groups live, the start-up validation rules, and building objects from them.

``CONF_DIR`` is the ``conf/`` folder Hydra composes from: inside the installed package
(``contrastlab/conf``, shipped in the wheel) or, in a source checkout, the repository's top-level
``conf/``. Users add their own groups with ``--config-dir`` or ``hydra.searchpath``.
"""

from __future__ import annotations

from pathlib import Path


def _conf_dir() -> str:
    package = Path(__file__).resolve().parents[1]  # .../contrastlab
    installed = package / "conf"
    if (installed / "train.yaml").is_file():  # a wheel install
        return str(installed)
    return str(package.parents[1] / "conf")  # a source checkout: <repo>/src/contrastlab -> <repo>/conf


CONF_DIR = _conf_dir()
