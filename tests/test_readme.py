"""Every `python -m covlight` command the README shows composes into a valid run (the first job of a sweep)."""

from __future__ import annotations

import re
import shlex

import pytest

from covlight.config import check_combination
from tests.helpers.runs import REPO, compose_config

PREFIX = ".venv/bin/python -m covlight "


def readme_commands() -> list[str]:
    """The README's shell lines that start a run (continuation lines joined), from its bash blocks."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(PREFIX):
                commands.append(line[len(PREFIX):])
    return commands


def first_job(command: str) -> list[str]:
    """The overrides of a command's first sweep job: flags dropped, each comma list's first value."""
    overrides = []
    words = shlex.split(command)
    for word in words:
        if word.startswith("-") or word == "job":
            continue
        key, _, value = word.partition("=")
        if "," in value and not value.startswith("["):
            value = value.split(",", 1)[0]
        overrides.append(f"{key}={value}")
    return overrides


def test_the_readme_shows_the_commands_a_user_needs():
    commands = readme_commands()
    assert len(commands) >= 8, commands
    assert any(" -m " in f" {c} " for c in commands) and any("task=task3" in c for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_composes(command):
    cfg = compose_config(first_job(command), return_hydra_config=True)
    check_combination(cfg)
    assert cfg.run_id and cfg.model.spatial_dims in (2, 3)
