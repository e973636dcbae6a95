"""Compiled serving programs kept beside the checkpoints, so that a server started again
(on a fresh machine or container with the workdir) compiles nothing.

They are JAX's persistent compilation cache, placed in WORKDIR/compiled, with a manifest
of the JAX version and the device that made them: JAX's own key already covers each
program's computation, and the manifest turns a mismatch (another JAX, another CPU
model whose instructions may differ) into one line and a fresh start instead of a miss
per program or a crash. The entries are native code: a workdir is trusted like code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jaxlib

MANIFEST = "manifest.json"


def this_machine() -> dict[str, str]:
    """What compiled programs depend on besides their computation."""
    device = jax.devices()[0]
    kind = device.device_kind
    if device.platform == "cpu":
        kind = _cpu_model()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "platform": device.platform,
        "device_kind": kind,
    }


def _cpu_model() -> str:
    """The CPU's model name and a digest of its instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    field = lambda name: next(  # noqa: E731
        (line.split(":", 1)[1].strip() for line in info if line.startswith(name)), ""
    )
    flags = hashlib.sha256(field("flags").encode()).hexdigest()[:12]
    return f"{field('model name') or platform.machine()} (flags {flags})"


def describe(made_by: dict) -> str:
    return f"jax {made_by.get('jax')} on {made_by.get('platform')} {made_by.get('device_kind')!r}"


def use_beside(workdir: str, log: Callable[[str], None]) -> None:
    """Make WORKDIR/compiled the compilation cache, unless $JAX_COMPILATION_CACHE_DIR names
    one (a workdir that cannot be written to keeps the default cache). Programs made
    elsewhere are dropped, with one line."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    directory = Path(workdir).expanduser().absolute() / "compiled"
    here = this_machine()
    try:
        manifest = directory / MANIFEST
        made_by = json.loads(manifest.read_text()) if manifest.is_file() else None
        made_by = made_by if isinstance(made_by, dict | None) else {}
        if made_by is not None and made_by != here:
            log(
                f"(the compiled programs in {directory} were made by {describe(made_by)}; "
                f"this is {describe(here)}: compiling anew)"
            )
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            return
        manifest.write_text(json.dumps(here, indent=1) + "\n")
    except (OSError, ValueError):
        return  # unreadable or unwritable: the default cache serves
    jax.config.update("jax_compilation_cache_dir", str(directory))
