"""A regular install works: the wheel carries the config tree, and covlight runs from it in a fresh environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.helpers.runs import REPO

# What a build reads: the packaging files, the packages, and the two folders it ships inside covlight.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "covlight", "hydra_plugins",
                "conf", "experiments")


def build_wheel(out: Path) -> Path:
    """Build the wheel from a copy of the build inputs, so the checkout gets no build/ or egg-info folders."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out / "dist"), str(source)], check=True, capture_output=True, text=True)
    wheels = list((out / "dist").glob("covlight-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def shipped_files() -> set[str]:
    """Every file of conf/ and experiments/ as the wheel must hold it (under covlight/)."""
    return {f"covlight/{path.relative_to(REPO).as_posix()}"
            for folder in ("conf", "experiments") for path in (REPO / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}


def test_wheel_holds_every_config_file(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = shipped_files()
    assert any(name.endswith("conf/config.yaml") for name in expected)
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "covlight/py.typed" in names
    assert "hydra_plugins/covlight_optuna.py" in names  # the sweeper of hparams_search=optuna
    assert any(name.startswith("covlight/resources/splits/") for name in names)
    assert any(name.endswith("/licenses/LICENSE") for name in names)


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_environment_runs_from_an_empty_folder(tmp_path):
    """Installs the built wheel (not the checkout) with its dependencies into a new virtual environment."""
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0", str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    recipes = tmp_path / "mine"
    (recipes / "experiment").mkdir(parents=True)
    (recipes / "experiment" / "my_recipe.yaml").write_text(
        "# @package _global_\nname: my_recipe\nseed: 7\n", encoding="utf-8")

    # the installed package only: no PYTHONPATH pointing at a checkout; the venv's console scripts first on PATH
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        done = subprocess.run([str(python), *args], cwd=empty, env=env, capture_output=True, encoding="utf-8")
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
        return done.stdout

    def shell(script: str) -> str:
        done = subprocess.run(["bash", "-c", script], cwd=empty, env=env, capture_output=True, encoding="utf-8")
        assert done.returncode == 0, f"{script}: {done.stderr[-3000:]}"
        return done.stdout

    location = run("-c", "import covlight; print(covlight.__file__)")
    assert Path(location.strip()).is_relative_to(venv), location
    assert "name: ${model.name}" in run("-m", "covlight", "--cfg", "job")
    assert shell("command -v covlight").strip() == str(venv / "bin" / "covlight")
    assert "name: demo" in shell("covlight experiment=demo --cfg job")
    job = run("-m", "covlight", "task=task3", "source=structseg", "subtask=infection", "--cfg", "job")
    assert "name: task3" in job and "name: structseg" in job and "name: infection" in job
    assert "--input" in run("-m", "covlight.predict", "--help")
    assert "seed: 7" in run("-m", "covlight", "--config-dir", str(recipes), "experiment=my_recipe", "--cfg", "job")
    assert run("-m", "covlight", "--version") == shell("covlight --version") == f"covlight {version('covlight')}\n"
    help_text = shell("covlight --help")
    assert help_text.startswith("covlight: ") and "\nexperiment: demo, " in help_text
    completions = shell('eval "$(covlight --shell-completion install=bash)"; COMP_LINE="covlight experiment="; '
                        'COMP_POINT=${#COMP_LINE}; COMP_CWORD=1; hydra_bash_completion; printf "%s\\n" "${COMPREPLY[@]}"')
    assert "experiment=demo" in completions.split()  # the README's way: eval "$(covlight -sc install=bash)"
    # hparams_search=optuna with a database storage: the pins give optuna 2.x a SQLAlchemy it works with
    run("-c", f"import optuna; optuna.create_study(storage='sqlite:///{tmp_path / 'study.db'}')")
    assert list(empty.iterdir()) == [], "a --cfg job run must leave nothing behind"
