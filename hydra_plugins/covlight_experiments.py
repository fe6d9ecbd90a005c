"""covlight's recipes (`experiments/*.yaml`) as the `experiment` config group of covlight's own config tree.

A search path plugin rather than `hydra.searchpath` in conf/config.yaml: Hydra reads a primary config's
`hydra.searchpath` when it composes, but not when it lists the groups for `--help`, so the group was missing there;
and a user's `hydra.searchpath=[...]` on the command line would have replaced it. The plugin adds the recipes only to
an app whose primary config folder is covlight's `conf/` (another Hydra app in the same environment gets nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class CovlightExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if "covlight.config" not in sys.modules:  # covlight's config tree is composed only after covlight.config
            return
        from covlight.config import ExperimentsConfigSource, conf_dir

        mains = [entry.path for entry in search_path.get_path() if entry.provider == "main" and entry.path]
        # `hydra.main` gives the folder as a plain path, `initialize_config_dir` as a file:// address
        if any(Path(path.removeprefix("file://")) == conf_dir() for path in mains):
            search_path.append("covlight", f"{ExperimentsConfigSource.scheme()}://")
