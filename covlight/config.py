"""Hydra plumbing: where the configs live, the `experiment` group, run identity, and valid combinations.

Importing this module registers the `covlight.*` OmegaConf resolvers, the config schemas (covlight/schema.py)
and the config source that serves the top-level `experiments/` folder as Hydra's `experiment` group.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import DictConfig, ListConfig, OmegaConf

import covlight.data.options  # noqa: F401  (registers conf/data's schema, data_schema, in Hydra's ConfigStore)
from covlight import benchmark
from covlight.atomic import write_json
from covlight.cluster import job_tasks
from covlight.errors import ConfigError, DiskFullError
from covlight.schema import register as register_schemas

PACKAGE_DIR = Path(__file__).resolve().parent
STATUS_FILE = "status.json"


def _shipped_dir(name: str) -> Path:
    """`conf/` or `experiments/` at the top of a checkout (editable install), else the copy in the wheel."""
    checkout = PACKAGE_DIR.parent / name
    return checkout if checkout.is_dir() else PACKAGE_DIR / name


def conf_dir() -> Path:
    return _shipped_dir("conf")


def experiments_dir() -> Path:
    return _shipped_dir("experiments")


class ExperimentsConfigSource(ConfigSource):
    """Serves `experiments/*.yaml` as the `experiment` config group (a recipe = one YAML file).

    Why a config source of our own: a Hydra search path entry is a config root whose sub-folders are groups, so
    the top-level `experiments/` folder (where the user's design keeps recipes) could only become the
    `experiment` group by moving it to `conf/experiment/` or by a root holding a link named `experiment`, which a
    wheel cannot ship. This class maps `experiment/<name>` to `experiments/<name>.yaml`, nothing more; the search
    path plugin in hydra_plugins/covlight_experiments.py adds it to covlight's config tree.
    """

    GROUP = "experiment"

    @staticmethod
    def scheme() -> str:
        return "covlight-experiments"

    def _real_path(self, config_path: str) -> Path | None:
        parts = config_path.strip("/").split("/", 1)
        if parts[0] != self.GROUP:
            return None
        root = Path(self.path) if self.path else experiments_dir()
        return root.joinpath(*parts[1:]) if len(parts) > 1 else root

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._real_path(self._normalize_file_name(config_path))
        if path is None or not path.is_file():
            raise ConfigLoadError(f"Config not found: {config_path}")
        text = path.read_text(encoding="utf-8")
        return ConfigResult(
            config=OmegaConf.create(text) if text.strip() else OmegaConf.create(),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header=ConfigSource._get_header_dict(text[:512]),
        )

    def available(self) -> bool:
        return (Path(self.path) if self.path else experiments_dir()).is_dir()

    def is_group(self, config_path: str) -> bool:
        if config_path.strip("/") == "":
            return True
        path = self._real_path(config_path)
        return path is not None and path.is_dir()

    def is_config(self, config_path: str) -> bool:
        path = self._real_path(self._normalize_file_name(config_path))
        return path is not None and path.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path.strip("/") == "":
            return [self.GROUP] if results_filter in (None, ObjectType.GROUP) else []
        path = self._real_path(config_path)
        files: list[str] = []
        if path is None or not path.is_dir():
            return files
        for entry in sorted(os.listdir(path)):
            self._list_add_result(files=files, file_path=f"{config_path}/{entry}", file_name=entry,
                                  results_filter=results_filter)
        return sorted(set(files))


Plugins.instance().register(ExperimentsConfigSource)


# ----------------------------------------------------------------------------------------------- identity
def _null(value) -> bool:
    return value is None or str(value) in ("", "None", "null")


def identity_parts(task, source, subtask, name, fold, seed) -> list[str]:
    """The run identity as path parts: <task>[-<source>]/<subtask>/<name>/[fold<k>-]seed<s>."""
    task_part = str(task) if _null(source) else f"{task}-{source}"
    run_part = f"seed{seed}" if _null(fold) else f"fold{fold}-seed{seed}"
    return [task_part, str(subtask), str(name), run_part]


def task_id(name, variant) -> str:
    """The task part of a run's identity: a split variant other than the official one is part of it, so runs on
    other splits never share a folder, a W&B group or a report row with the official ones."""
    return str(name) if _null(variant) or str(variant) == "official" else f"{name}_{variant}"


def run_id(task, variant, source, subtask, name, fold, seed) -> str:
    """The `run_id` key (conf/config.yaml): <task>[_<variant>][-<source>]/<subtask>/<name>/[fold<k>-]seed<s>."""
    return "/".join(identity_parts(task_id(task, variant), source, subtask, name, fold, seed))


def group_name(identity) -> str:
    """The W&B group of a run identity: <task>[_<variant>][-<source>]-<subtask>-<name>."""
    return "-".join(str(identity).split("/")[:3])


def job_name(identity) -> str:
    """The W&B run name of a run identity: [fold<k>-]seed<s>."""
    return str(identity).split("/")[3]


def tags(identity, source, model) -> list[str]:
    task_part, subtask = str(identity).split("/")[:2]
    task = task_part if _null(source) else task_part.removesuffix(f"-{source}")
    return [f"task:{task}", f"source:{'none' if _null(source) else source}", f"subtask:{subtask}", f"model:{model}"]


def read_status(run_dir: Path) -> dict:
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_status(run_dir: Path, state: str, **extra) -> None:
    """`status.json` says running / failed / finished; only a finished run has its results complete."""
    path = Path(run_dir) / STATUS_FILE
    payload = {**read_status(run_dir), "state": state, "updated": _dt.datetime.now().isoformat(timespec="seconds"),
               **extra}
    try:
        write_json(path, payload)
    except DiskFullError:  # no room for a second copy: rewritten in place, it reuses its own blocks
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


_CHOSEN: dict[tuple, Path] = {}
LOCK_FILE = "run.lock"
JOIN_TIMEOUT_S = 600
_LOCKS: dict[Path, int] = {}  # the lock file descriptor of each run folder this process has claimed


def run_dir(output_root, identity, resume, job=0) -> str:
    """The run folder, chosen without touching the disk (so `--cfg`, a failed composition or a config merely read
    leave nothing behind): with resume=auto the newest unfinished run of the identity, else a new timestamped folder.
    A rank other than 0 of a cluster job (covlight.cluster) joins the folder its rank 0 claimed instead.

    The same answer for every read in this process and sweep job (Hydra resolves the path more than once); Hydra
    creates the folder when the job starts and the run claims it (`claim_run_dir`).
    """
    key = (str(output_root), str(identity), str(resume), job)
    if key not in _CHOSEN:
        tasks, parent = job_tasks(), Path(str(output_root)) / str(identity)
        if tasks.rank > 0:
            _CHOSEN[key] = _join_run_dir(parent, tasks.key, tasks.rank)
        else:
            _CHOSEN[key] = _choose_run_dir(parent, resume, tasks.key)
    return str(_CHOSEN[key])


def _unfinished(parent: Path, job_key: str | None = None) -> list[Path]:
    """The identity's unfinished run folders, oldest first (of one job only, when `job_key` is given)."""
    if not parent.is_dir():
        return []
    statuses = [(d, read_status(d)) for d in sorted(parent.iterdir())]
    return [d for d, status in statuses if status.get("state") in ("running", "failed")
            and (job_key is None or status.get("job") == job_key)]


def _choose_run_dir(parent: Path, resume, job_key: str | None = None) -> Path:
    if not _null(resume) and str(resume) != "auto":
        raise ConfigError(f"resume={resume!r}: use resume=auto, or ckpt_path=<checkpoint> for a given checkpoint")
    own = _unfinished(parent, job_key) if job_key else []
    if own:  # this job, requeued (preempted, timed out): it continues in its own folder
        return own[-1]
    if str(resume) == "auto" and _unfinished(parent):
        return _unfinished(parent)[-1]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    chosen = set(_CHOSEN.values())
    for suffix in range(1, 10_000):
        folder = parent / (stamp if suffix == 1 else f"{stamp}_{suffix}")
        if not folder.exists() and folder not in chosen:
            return folder
    raise ConfigError(f"{parent}: no free run folder name for {stamp}")


def _join_run_dir(parent: Path, job_key: str, rank: int) -> Path:
    """Rank `rank` of a cluster job: the unfinished folder its rank 0 claimed for the job, once it has."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not _unfinished(parent, job_key):
        if time.monotonic() > deadline:
            raise ConfigError(f"rank {rank} of job {job_key}: rank 0 claimed no run folder under {parent} within "
                              f"{JOIN_TIMEOUT_S} s; see rank 0's log for why it stopped")
        time.sleep(0.5)
    return _unfinished(parent, job_key)[-1]


def run_subdir(output_root, *identity) -> str:
    return os.path.relpath(run_dir(output_root, *identity), str(output_root))


def claim_run_dir(run_dir: Path, resume: bool, if_busy: str = "error", job: str | None = None) -> Path:
    """Make a run folder this run's, when the run starts, and hold it until the run ends (an advisory lock on
    `run.lock`, which holds the holder's pid; the kernel drops it when the process dies, so a killed run never
    blocks a resume). Returns the folder claimed:

    - a finished run is never touched;
    - `resume` on an unfinished folder: that folder, unless a live run holds it: then an error naming its pid, or,
      with if_busy="new", a new folder;
    - a new run: `run_dir`, or the next free name (`<name>_2`, ...) when another run claimed it first (two jobs of
      the same identity started in the same second chose the same name).
    `job` (a cluster job's id) is recorded in status.json, where the job's other ranks and a requeued job find it.
    """
    state = read_status(run_dir).get("state")
    if state == "finished":
        raise ConfigError(f"{run_dir} holds a finished run; it is never touched. Start a new run instead.")
    if resume and state is not None:
        if _lock(run_dir):
            write_status(run_dir, "running", **({"job": job} if job else {}))
            return run_dir
        holder = _lock_holder(run_dir)
        if if_busy != "new":
            raise ConfigError(f"{run_dir} is in use by process {holder} (it holds {run_dir / LOCK_FILE}): wait "
                              "for that run to end or stop it, or pass resume_busy=new to train in a new folder")
        logging.getLogger("covlight").warning("%s is in use by process %s: this run takes a new folder", run_dir,
                                              holder)
        return _claim_new(run_dir.parent / _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"), job)
    return _claim_new(run_dir, job)


def _claim_new(run_dir: Path, job: str | None) -> Path:
    match = re.fullmatch(r"(.*)_(\d+)", run_dir.name)
    base, first = (match.group(1), int(match.group(2))) if match else (run_dir.name, 1)
    for number in range(first, first + 10_000):
        folder = run_dir.parent / (base if number == 1 else f"{base}_{number}")
        folder.mkdir(parents=True, exist_ok=True)
        if not _lock(folder):
            continue
        try:
            with open(folder / STATUS_FILE, "x", encoding="utf-8") as handle:
                handle.write(json.dumps({"state": "running", **({"job": job} if job else {})}) + "\n")
        except FileExistsError:  # a run that ended, or died, claimed it before
            release_run_dir(folder)
            continue
        if folder != run_dir:
            logging.getLogger("covlight").info("%s was claimed by another run: this run takes %s", run_dir, folder)
        return folder
    raise ConfigError(f"{run_dir.parent}: no free run folder name for {base}")


def _lock(run_dir: Path) -> bool:
    """Take the run folder's lock without waiting; write this process's pid into the lock file."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[run_dir] = fd
    return True


def _lock_holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK_FILE).read_text(encoding="utf-8").strip() or "(starting)"
    except OSError:
        return "(unknown)"


def release_run_dir(run_dir: Path) -> None:
    """Let go of a run folder this process claimed (a sweep's next job in this process may resume it)."""
    fd = _LOCKS.pop(Path(run_dir), None)
    if fd is not None:
        os.close(fd)


def _register_resolvers() -> None:
    resolvers = {
        # lists as ListConfig: OmegaConf.resolve (Hydra's instantiate) refuses a plain list from a resolver
        "covlight.structures": lambda subtask: ListConfig(list(benchmark.SUBTASKS[subtask].structures)),
        "covlight.label_values": lambda structures: ListConfig(benchmark.label_values(structures)),
        "covlight.num_classes": lambda structures: len(benchmark.label_values(structures)),
        "covlight.has_folds": lambda task: task in benchmark.TASKS_WITH_FOLDS,
        "covlight.num_folds": lambda task: len(benchmark.FOLDS) if task in benchmark.TASKS_WITH_FOLDS else 1,
        "covlight.run_id": run_id,
        "covlight.run_dir": run_dir,
        "covlight.run_subdir": run_subdir,
        "covlight.group": group_name,
        "covlight.job_name": job_name,
        "covlight.tags": lambda identity, source, model: ListConfig(tags(identity, source, model)),
        "covlight.wandb_offline": lambda: os.environ.get("WANDB_MODE", "offline") != "online",
        "covlight.job_type": lambda test_only: "test" if test_only else "train",
    }
    for name, function in resolvers.items():
        OmegaConf.register_new_resolver(name, function, replace=True)


_register_resolvers()
register_schemas()


# ----------------------------------------------------------------------------------------- combinations
def check_combination(cfg: DictConfig) -> None:
    """Fail at once, with the fix, on a (task, source, subtask, fold) the benchmark does not define, or a value no
    run can use."""
    task, source, subtask, fold = cfg.task.name, cfg.source.name, cfg.subtask.name, cfg.fold
    if "datasets" in cfg.task:
        check_custom_task(cfg)
    else:
        if task not in benchmark.TASKS:
            raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(benchmark.TASKS)}, or task=custom "
                              f"task.name={task} for a task of your own")
        if task not in benchmark.TASKS_WITH_FOLDS and fold is not None:  # a fold would name the run's folder
            raise ConfigError(f"{task} has one split and no folds: drop fold={fold}")
        benchmark.check_combination(task, subtask, fold, source, cfg.task.get("variant", "official"))
    check_side_augmentation(cfg)
    if cfg.model.batch_size < 1:  # torch's own message would not name the key
        raise ConfigError(f"model.batch_size={cfg.model.batch_size}: give the number of patches per batch and "
                          "process, 1 or more")
    model_dims = cfg.model.spatial_dims
    patch = list(cfg.model.patch_size)
    if len(patch) != 3 or (model_dims == 2) != (patch[2] == 1):
        raise ConfigError(
            f"model.patch_size={patch}: give three sizes (x, y, z); a 2D model uses z = 1, a 3D model z > 1"
        )


def check_side_augmentation(cfg: DictConfig) -> None:
    """Left and right lungs are told apart by their side: a mirror along x or a quarter turn would teach (or, at test
    time, average in) the wrong side."""
    structures = set(cfg.subtask.structures)
    if not structures & {"left_lung", "right_lung"}:
        return
    augmentation = cfg.data.augmentation
    mirrored = [("data.augmentation.flip_axes", list(augmentation.flip_axes)),
                ("model.module.inference.mirror_axes",
                 list(OmegaConf.select(cfg, "model.module.inference.mirror_axes", default=None) or []))]
    for key, axes in mirrored:
        if 0 in axes:
            raise ConfigError(f"{key}={axes} mirrors along x, which swaps the left and right lungs of "
                              f"subtask={cfg.subtask.name}: drop axis 0 (axes 1 and 2 keep the sides)")
    if augmentation.rot90_probability:
        raise ConfigError(f"data.augmentation.rot90_probability={augmentation.rot90_probability} turns the left and "
                          f"right lungs of subtask={cfg.subtask.name} out of place: set it to 0 (fine for infection)")


def check_custom_task(cfg: DictConfig) -> None:
    """A custom task (conf/task/custom.yaml): its own name, no benchmark source, a fold in range."""
    task, source, fold = cfg.task.name, cfg.source.name, cfg.fold
    benchmark.check_custom_task(task, source)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(task)):
        raise ConfigError(f"task.name={task!r}: use letters, digits, '_', '.', '-' (it names the run folders)")
    num_folds = int(cfg.task.num_folds)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        last = num_folds - 1
        raise ConfigError(f"task {task} has folds 0..{last}: set fold=<k> (got fold={fold}), or "
                          f"-m fold=0,...,{last} for cross-validation")
