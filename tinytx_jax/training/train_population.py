"""Training a population: its plan checked, its groups trained one after another (each
by `population_loop.train_group`), then its report."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import jax

from tinytx_jax import parallel
from tinytx_jax.configuration import ConfigError
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import population, population_loop, population_report
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.member_axis import devices_for
from tinytx_jax.training.memory import check_fits_in_memory


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
            population_loop.train_group(group, group.directory(workdir), len(groups), log)
    log(population_report.report(workdir))
    log(f"Curves: {population_report.plot_population(workdir)}")
