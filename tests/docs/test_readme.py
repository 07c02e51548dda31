"""The README's config-group table lists exactly the options that exist in conf/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# groups documented in the table -> folder under conf/
FOLDERS = {"hydra/launcher": CONF / "hydra" / "launcher", "data/batch_sampler": CONF / "data" / "batch_sampler"}


def _readme_table() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Config groups", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([\w/]+)`[^|]*\|([^|]*)\|", line)
        if m:
            table[m.group(1)] = set(re.findall(r"`([\w.-]+)`", m.group(2)))
    return table


def _options(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.yaml")}


def test_readme_lists_every_group_and_option() -> None:
    table = _readme_table()
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert groups <= set(table), f"groups missing from the README table: {sorted(groups - set(table))}"
    for group, options in table.items():
        folder = FOLDERS.get(group, CONF / group)
        assert folder.is_dir(), f"README lists group '{group}' with no folder {folder}"
        assert options == _options(folder), f"{group}: README {sorted(options)} vs conf {sorted(_options(folder))}"
    for group, folder in FOLDERS.items():
        assert group in table and _options(folder) == table[group]


def test_readme_shows_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make train" in text and "make test" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_test_runs_the_lint_target() -> None:
    """``make lint`` (ruff's rules and its formatter check) runs first in every ``make test``, hence in CI."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: lint\b", makefile, flags=re.M)
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "ruff check src tests benchmarks" in lint and "ruff format --check src tests benchmarks" in lint
