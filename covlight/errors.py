"""The user's mistakes covlight reports, and the one way its command-line tools print them.

A `CovlightError` is a mistake the user can fix (a config value, a missing or malformed file, an argument): its
message is one line that names the file or the key and says the fix. Anything else is a failure of covlight or of
the work and keeps its traceback. Exit status of every tool: 0 done, `USER_MISTAKE` (2) nothing was done because of
a mistake, `WORK_FAILED` (1) the work ran and part of it failed (a case, an input, a training run, a sweep job).
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

USER_MISTAKE = 2
WORK_FAILED = 1


class CovlightError(Exception):
    """A user's mistake; the message names the file (or key, or argument) and the fix."""


class ConfigError(CovlightError):
    """An invalid combination or value in the composed config or a run folder."""


class DatasetError(CovlightError):
    """A dataset folder or file is missing or malformed."""


class DiskFullError(CovlightError):
    """A file could not be written for lack of space (ENOSPC, or a quota: EDQUOT)."""


def disk_full(error: BaseException, path=None, folder=None) -> DiskFullError | None:
    """`error` as one line naming the file (`path`, else the error's own file name, else "a file in `folder`") and
    the space left, when it or an error it was raised from is a full disk or quota; None otherwise."""
    if isinstance(error, DiskFullError):
        return error
    pending, seen = [error], set()  # causes and contexts; a chain can loop (`raise error.__cause__ from None`)
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            break
        seen.add(id(error))
        pending += [error.__context__, error.__cause__]
    else:
        return None
    target = path or getattr(error, "filename", None)
    where = Path(target or folder or ".")
    name = str(target) if target else f"a file in {where}"
    return DiskFullError(f"{name} could not be written: {error.strerror or 'no space left on device'} "
                         f"({_free_space(where)}). Free some space (or write elsewhere) and run again.")


def _free_space(path: Path) -> str:
    """'<n> kB free in <folder>' (MB from 10 MB on) for the nearest existing folder of `path`."""
    folder = path.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"free space in {folder} unknown"
    amount = f"{free / 1024:.0f} kB" if free < 10 * 1024**2 else f"{free / 1024**2:.0f} MB"
    return f"{amount} free in {folder}"


def user_mistake(error: BaseException) -> CovlightError | None:
    """What an entry point reports as one line: a CovlightError, or a full disk met anywhere; None for a bug."""
    return error if isinstance(error, CovlightError) else disk_full(error)


def report_error(prog: str, error: BaseException | str, status: int = USER_MISTAKE) -> int:
    """Print `<prog>: error: <message>` as one line on stderr; return the exit status to end with."""
    message = " ".join(str(error).splitlines())
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status
