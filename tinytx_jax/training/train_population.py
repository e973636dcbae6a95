"""Training a population: its plan checked, its groups trained one after another (each
by its own PopulationLoop), then its report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import jax

from tinytx_jax import interrupt, parallel
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.configuration import ConfigError
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import population, population_report
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.member_axis import devices_for
from tinytx_jax.training.memory import check_fits_in_memory
from tinytx_jax.training.population import Group
from tinytx_jax.training.population_loop import PopulationLoop
from tinytx_jax.training.population_steps import build_programs
from tinytx_jax.training.task import build_task


def train_population(
    run: RunConfig,
    workdir: str,
    log: Callable[[str], None] = print,
    set_cpu_devices: bool = False,
) -> None:
    """Train every group of the population in `run`, then print its report;
    `set_cpu_devices`: first split a CPU into as many devices as the members spread over."""
    groups = population.plan(run)
    if set_cpu_devices:
        cores = len(os.sched_getaffinity(0))
        count = len(groups[0].members)
        parallel.use_cpu_devices(devices_for(count, run.host.cpu_devices or cores))
    if jax.process_count() > 1:
        raise ConfigError("a population trains in one process: drop config.seeds/sweep/groups")
    if run.data.augment_user:
        raise ConfigError(
            "config.augment_user retypes the data by seed, and a population's members share "
            "their data: train each seed alone, or set config.augment_user=0"
        )
    if run.data.feed == "host":
        raise ConfigError(
            "a population trains from windows held on the devices: set config.feed=auto or "
            "device, or train each seed alone"
        )
    if jax.default_backend() == "cpu":
        for group in groups:
            check_fits_in_memory(group.run, members=len(group.members))
    with run_workdir.training_lock(workdir):
        if not run.train.resume:
            moved = run_workdir.set_aside(workdir)
            if moved:
                log(f"Starting over: the previous run's files were moved to {moved}")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        population.write_plan(workdir, groups)
        count = sum(len(group.members) for group in groups)
        after = "; the groups train one after another" if len(groups) > 1 else ""
        log(f"Population of {count} members: {'; '.join(g.describe() for g in groups)}{after}")
        for group in groups:
            train_group(group, group.directory(workdir), len(groups), log)
    log(population_report.report(workdir))
    log(f"Curves: {population_report.plot_population(workdir)}")


def train_group(group: Group, directory: Path, groups: int, log: Callable[[str], None]) -> None:
    task = build_task(group.run, log, mesh=parallel.make_mesh(1))
    if task.data.host_feed:
        raise ConfigError(
            "a population trains from windows held on the devices, and this data is fed from "
            "host memory: set config.feed=device if it fits, or train each seed alone"
        )
    with CheckpointStore(directory, keep=task.run.train.keep_checkpoints) as store:
        start = time.perf_counter()
        programs = build_programs(task, group)
        loop = PopulationLoop(programs.task, group, programs, store, directory, log, groups)
        if loop.resume():
            return
        loop.announce(programs.members, time.perf_counter() - start)
        with interrupt.SignalCatcher() as signals, loop:
            for epoch in range(loop.saved_epoch + 1, task.run.train.epochs + 1):
                if not loop.run_epoch(epoch, signals):
                    break
        loop.summarise()
