"""A population's workdir: which members it holds (`population.json`), where each one's
checkpoints are, and one member's parameters taken from a checkpoint of them all."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from tinytx_jax.checkpoints.store import CheckpointError, CheckpointStore

PLAN_FILE = "population.json"


def read_plan(workdir: str | os.PathLike) -> dict | None:
    """The population's plan, or None when `workdir` holds a solo run."""
    path = Path(workdir) / PLAN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def describe_member(member: dict) -> str:
    given = "".join(f", {name}={value}" for name, value in member["values"].items())
    return f"member {member['index']} (seed {member['seed']}{given})"


def group_directory(workdir: str | os.PathLike, plan: dict, member: int, which: str) -> Path:
    """The directory of the group that holds `member` (-1: the group whose `which`
    checkpoint holds the member of lowest validation loss)."""
    groups = plan["groups"]
    if member >= 0:
        count = sum(len(group["members"]) for group in groups)
        for group in groups:
            if any(m["index"] == member for m in group["members"]):
                return Path(workdir) / group["directory"]
        raise CheckpointError(
            f"config.member={member} is out of range: the population in {workdir} has {count} "
            f"members (0 to {count - 1}); -1 picks the best"
        )
    if len(groups) == 1:
        return Path(workdir) / groups[0]["directory"]
    lowest = {}
    for group in groups:
        directory = Path(workdir) / group["directory"]
        with CheckpointStore(directory, read_only=True) as store:
            steps = store.steps()
            if steps:
                meta = store.read_meta(store.best_step() if which == "best" else steps[-1])
                lowest[directory] = meta["metrics"]["val_loss"]
    if not lowest:
        raise CheckpointError(f"no checkpoint of any group in {workdir}: train it first")
    return min(lowest, key=lowest.get)


def pick(params: Any, meta: dict, member: int, log: Callable[[str], None]) -> tuple[Any, dict]:
    """One member's parameters and meta (its own metrics) from a checkpoint of its group."""
    saved = meta["population"]["members"]
    measured = [i for i, m in enumerate(saved) if m["metrics"]]
    if member >= 0:
        position = next(i for i, m in enumerate(saved) if m["member"]["index"] == member)
        how = "config.member"
    else:
        position = min(measured, key=lambda i: saved[i]["metrics"]["val_loss"])
        how = "the lowest validation loss; config.member picks another"
    chosen = saved[position]
    log(f"(using {describe_member(chosen['member'])} of the population: {how})")
    meta = {**meta, "metrics": chosen["metrics"] or meta["metrics"], "member": chosen["member"]}
    return jax.tree.map(lambda x: x[position], params), meta
