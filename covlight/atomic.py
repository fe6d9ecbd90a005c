"""Write a file whole or not at all: a reader never sees half a file under the final name.

The content goes to a temporary `.partial-<pid>-<name>` in the target's folder (same file system, so the rename
is atomic; the pid keeps parallel writers apart; the name keeps its suffix, so nibabel or numpy pick the right
format), is flushed to disk, then renamed over the target. On an error the temporary is removed and the target
is left as it was; a killed process leaves only a `.partial-*` file, which nothing takes for a result. A full disk
(or quota) is raised as one `DiskFullError` line naming the target and the space left, never a raw ENOSPC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from covlight.errors import disk_full


@contextmanager
def replacing(path) -> Iterator[Path]:
    """Yields the temporary path to write; when the block ends without error it replaces `path`.

    The folder of `path` is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException as error:
        full = disk_full(error, path)  # before the partial file goes: the space free when the write failed
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from None
        raise


def write_text(path, text: str) -> None:
    with replacing(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, payload) -> None:
    """`payload` as indented JSON with a final newline."""
    write_text(path, json.dumps(payload, indent=1) + "\n")
