"""`covlight --version` and `covlight --help` speak for covlight, and the `experiment` group is covlight's alone."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from covlight.config import conf_dir, experiments_dir
from tests.helpers.runs import REPO


def covlight(*args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "covlight", *args], cwd=REPO, capture_output=True,
                            env=env, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_version_is_covlights_from_its_package_metadata():
    assert covlight("--version") == f"covlight {version('covlight')}\n"


def test_help_opens_with_covlights_words_and_lists_every_group():
    text = covlight("--help")
    assert text.startswith("covlight: train and test")
    for command in ("covlight.prepare", "covlight task=", "covlight -m", "covlight.report", "covlight.predict"):
        assert command in text
    groups = dict(line.split(": ", 1) for line in text.split("== Config groups ==")[1].split("== Config ==")[0]
                  .splitlines() if ": " in line and " " not in line.split(": ")[0])
    recipes = sorted(path.stem for path in experiments_dir().glob("*.yaml"))
    assert groups["experiment"].split(", ") == recipes
    assert {"task", "source", "subtask", "model", "method", "optimizer", "trainer", "logger"} <= set(groups)
    assert "Hydra" not in text.splitlines()[0]


def groups_of(config_dir) -> list[str]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return GlobalHydra.instance().config_loader().list_groups("")


def test_experiment_group_joins_only_covlights_own_config_tree(tmp_path):
    (tmp_path / "config.yaml").write_text("x: 1\n", encoding="utf-8")
    assert "experiment" in groups_of(conf_dir())
    assert "experiment" not in groups_of(tmp_path)  # another Hydra app in the same environment


def test_shell_completion_offers_the_groups_and_the_recipes():
    """What the bash function of `covlight --shell-completion install=bash` asks for each <TAB>."""
    for line, expected in (("covlight exp", "experiment="), ("covlight experiment=", "experiment=demo")):
        env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
        assert expected in covlight("--shell-completion", "query=bash", env=env).split()
