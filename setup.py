"""Package layout (the rest of the metadata is in pyproject.toml).

The repository keeps its Hydra configs in the top-level ``conf/``; the wheel ships them as
``contrastlab/conf`` (every group folder a data-only package), where ``contrastlab.config.CONF_DIR``
finds them. ``tests/cli/test_wheel.py`` builds the wheel, installs it and trains from an empty folder.
"""

from setuptools import find_namespace_packages, setup

conf = ["contrastlab.conf", *(f"contrastlab.conf.{name}" for name in find_namespace_packages("conf"))]
setup(
    packages=[*find_namespace_packages("src", include=["contrastlab", "contrastlab.*"]), *conf],
    package_dir={"": "src", "contrastlab.conf": "conf"},
    package_data={"contrastlab": ["py.typed"], "contrastlab.data.assets": ["*"], **{name: ["*.yaml"] for name in conf}},
)
