"""What machine a figure came from: the CPU model and its matrix/vector extensions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model() -> str:
    """`model name` from /proc/cpuinfo (what lscpu prints), with the extensions that change
    XLA:CPU's code: e.g. 'Intel(R) Xeon(R) Processor [avx2 avx512f amx_tile]'."""
    name, found = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                found = [e for e in EXTENSIONS if e in flags]
                break
    return f"{name} [{' '.join(found)}], {len(os.sched_getaffinity(0))} cores"
