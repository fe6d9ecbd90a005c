"""What every performance benchmark shares: machine facts, memory of this process, contenders in subprocesses.

A script runs each contender in its own process (`run_worker`): the worker prints one JSON line last on stdout,
its peak memory is its own. Peers alternate (A, B, A, B, ...) so a burst of load from elsewhere hits both, and
each figure is a median over rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_info(**versions) -> dict:
    """The machine, the library versions that matter and the load average (other work on the machine skews time)."""
    import numpy as np
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "memory_gb": round(memory_kb / 2**20, 1), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    info.update(versions)
    return info


# glibc raises its mmap threshold as large blocks are freed, after which freed activations stay in the heap and
# RSS follows fragmentation rather than live tensors; a fixed threshold maps every large tensor on its own, so the
# peak RSS of a worker is its peak of live memory (the same setting for every contender).
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_worker(script: str, arguments: list[str], timeout_s: float = 1800) -> dict:
    """Run `script --worker ...` in a fresh process and return the JSON of its last stdout line (or an error)."""
    command = [sys.executable, script, *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=timeout_s,
                              env={**os.environ, **WORKER_ENV})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-800:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(report: dict, out: str | None) -> None:
    """The report as JSON on stdout and, with --out, in that file; the load average at the end is added."""
    report.setdefault("machine", {})["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
