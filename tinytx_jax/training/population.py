"""A population: one run's settings trained as many members, told apart by seed and by
per-member values, and the groups they train in.

`config.seeds=K` trains seeds `seed, seed+1, ...`; `config.sweep="lr=1e-3,3e-3;
weight_decay=0,0.1"` crosses those values with every seed. Swept values must be ones a
member can hold as an array (MEMBER_VALUES), so all the members of a group train in one
program. Values that change shapes or Python-level choices (width, depth, dropout, the
plateau factor, ...) go in `config.groups="d_model=32,64"`: each of their combinations
is a group, trained after the one before, in its own directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import ml_collections

from tinytx_jax.checkpoints.members import PLAN_FILE, describe_member
from tinytx_jax.configuration import MAX_INT32, ConfigError
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training.optim import MEMBER_VALUES

GROUPS_DIR = "groups"
STOPS_FILE = "stops.json"
NOT_VARIED = ("seeds", "sweep", "groups", "member", "seed", "resume", "data_path")


@dataclasses.dataclass(frozen=True)
class Member:
    """One member: its index in the population, its seed and the values it was given."""

    index: int
    seed: int
    values: dict[str, Any]  # the swept and group values, by config name
    group: int

    def describe(self) -> str:
        return describe_member(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class Group:
    """Members trained in one program: equal in every value that is not an array."""

    index: int
    values: dict[str, Any]  # the group's values (config.groups), by name
    run: RunConfig  # its settings, as its first member's
    members: tuple[Member, ...]
    swept: dict[str, list]  # each MEMBER_VALUES name its members differ in: their values
    place: str  # its directory in the workdir: "." when it is the only group

    def directory(self, workdir: str | Path) -> Path:
        """Where the group's checkpoints and metrics live."""
        return Path(workdir) / self.place

    def describe(self) -> str:
        if not self.values:
            return f"{len(self.members)} members"
        given = ", ".join(f"{name}={value}" for name, value in self.values.items())
        return f"group {self.index} ({given}): {len(self.members)} members"


def parse_values(text: str, flat: ml_collections.ConfigDict, option: str) -> list[tuple]:
    """`"lr=1e-3,3e-3; weight_decay=0,0.1"` as [(name, [values]), ...], each value of its
    field's type."""
    parsed = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, equals, listed = (s.strip() for s in part.partition("="))
        if not equals or not name:
            raise ConfigError(
                f"config.{option}: {part!r} is not NAME=VALUE,VALUE,...: e.g. "
                f'--config.{option}="lr=1e-3,3e-3"'
            )
        if name not in flat or name in NOT_VARIED:
            raise ConfigError(f"config.{option}: {name!r} is not a config field a member can vary")
        if name in (n for n, _ in parsed):
            raise ConfigError(f"config.{option}: {name} is given twice")
        values = [v.strip() for v in listed.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"config.{option}: {name} has no values: list them, e.g. {name}=1,2")
        parsed.append((name, [_typed(name, v, flat[name], option) for v in values]))
    if text.strip() and not parsed:
        raise ConfigError(f"config.{option} is empty: give NAME=VALUE,VALUE,... or leave it unset")
    return parsed


def _typed(name: str, text: str, current: Any, option: str) -> Any:
    kind = type(current) if current is not None else float
    try:
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is int and float(text).is_integer():
            return int(float(text))
        if kind in (float, str):
            return kind(text)
    except ValueError:
        pass
    raise ConfigError(f"config.{option}: {name}={text!r} is not a {kind.__name__}")


def plan(run: RunConfig) -> list[Group]:
    """The population's groups and members, each member's settings checked."""
    flat, population = run.flat, run.population
    swept = parse_values(population.sweep, flat, "sweep")
    grouped = parse_values(population.groups, flat, "groups")
    for name, _ in swept:
        if name not in MEMBER_VALUES:
            raise ConfigError(
                f"config.sweep: {name} cannot differ between members of one program (only "
                f"{', '.join(MEMBER_VALUES)} can): put it in config.groups, whose values "
                "train one group after another"
            )
    if "warmup_steps" in (n for n, _ in swept) and not run.optim.plateau_enabled:
        raise ConfigError(
            "config.sweep: warmup_steps differs between members only with "
            "lr_schedule='constant': put it in config.groups"
        )
    overlap = {n for n, _ in swept} & {n for n, _ in grouped}
    if overlap:
        raise ConfigError(f"config.sweep and config.groups both give {sorted(overlap)[0]}")
    last_seed = run.train.seed + population.seeds - 1
    if last_seed > MAX_INT32:
        raise ConfigError(f"config.seed + config.seeds - 1 must be at most {MAX_INT32}")
    groups, index, combinations = [], 0, _combinations(grouped)
    for group_index, group_values in enumerate(combinations):
        members = []
        for member_values in _combinations(swept):
            for offset in range(population.seeds):
                values = {**group_values, **member_values}
                members.append(Member(index, run.train.seed + offset, values, group_index))
                index += 1
        group_run = member_run(run, members[0])
        for member in members[1:]:
            member_run(run, member)  # each member's values checked, with its name
        values = {name: [m.values[name] for m in members] for name, _ in swept}
        place = "." if len(combinations) == 1 else f"{GROUPS_DIR}/{group_index}"
        groups.append(Group(group_index, group_values, group_run, tuple(members), values, place))
    return groups


def _combinations(named: list[tuple]) -> list[dict]:
    names = [name for name, _ in named]
    return [
        dict(zip(names, chosen, strict=True))
        for chosen in itertools.product(*(v for _, v in named))
    ]


def member_run(run: RunConfig, member: Member) -> RunConfig:
    """The settings `member` trains with: its own run's, as if trained alone."""
    flat = run.flat.copy_and_resolve_references()
    with flat.unlocked():
        flat.seed = member.seed
        for name, value in member.values.items():
            flat[name] = value
    try:
        return RunConfig.from_flat(flat)
    except ConfigError as error:
        raise ConfigError(f"{member.describe()}: {error}") from None


def write_plan(workdir: str | Path, groups: list[Group]) -> None:
    """`population.json`: every member, its values and its group's directory."""
    plan = {
        "groups": [
            {
                "index": group.index,
                "values": group.values,
                "directory": group.place,
                "members": [dataclasses.asdict(m) for m in group.members],
            }
            for group in groups
        ]
    }
    (Path(workdir) / PLAN_FILE).write_text(json.dumps(plan, indent=1) + "\n")


def write_stops(directory: Path, stops: dict[int, tuple[int, str]]) -> None:
    """A group's `stops.json`: where each member that stopped did, and why."""
    text = json.dumps({str(index): list(stop) for index, stop in stops.items()})
    (directory / STOPS_FILE).write_text(text + "\n")
