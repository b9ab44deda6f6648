"""Describe the machine a figure was measured on: every benchmark and measurement carries this."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """CPU model, usable cores, memory, OS and Python version."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(total_kib / 2**20, 1)
    return {"cpu": cpu_model(), "cores": cores, "memory_gib": memory_gib,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def identity() -> dict[str, object]:
    """What makes a timing this machine's: :func:`describe` and the host's name. A measurement
    keyed by it is never reused on another machine as if it had been made there."""
    return describe() | {"host": platform.node()}


def label(found: dict[str, object] | None = None) -> str:
    """A machine in a few words (CPU, cores, host): where a timing was made."""
    found = found or identity()
    return f"{found.get('cpu')}, {found.get('cores')} cores, {found.get('host')}"


def summary() -> str:
    d = describe()
    return f"{d['cpu']}, {d['cores']} cores, {d['memory_gib']} GiB, {d['os']}, Python {d['python']}"
