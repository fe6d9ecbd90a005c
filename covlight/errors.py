"""The user's mistakes covlight reports, and the one way its command-line tools print them.

A `CovlightError` is a mistake the user can fix (a config value, a missing or malformed file, an argument): its
message is one line that names the file or the key and says the fix. Anything else is a failure of covlight or of
the work and keeps its traceback. Exit status of every tool: 0 done, `USER_MISTAKE` (2) nothing was done because of
a mistake, `WORK_FAILED` (1) the work ran and part of it failed (a case, an input, a training run, a sweep job).
"""

from __future__ import annotations

import sys

USER_MISTAKE = 2
WORK_FAILED = 1


class CovlightError(Exception):
    """A user's mistake; the message names the file (or key, or argument) and the fix."""


class ConfigError(CovlightError):
    """An invalid combination or value in the composed config or a run folder."""


class DatasetError(CovlightError):
    """A dataset folder or file is missing or malformed."""


def report_error(prog: str, error: BaseException | str, status: int = USER_MISTAKE) -> int:
    """Print `<prog>: error: <message>` as one line on stderr; return the exit status to end with."""
    message = " ".join(str(error).splitlines())
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return status
