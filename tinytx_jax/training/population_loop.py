"""A population group's training loop: every member takes each step together (train an
epoch, evaluate, record, decide, checkpoint), and each stops as its solo run would,
frozen from then on."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from tinytx_jax import interrupt, parallel
from tinytx_jax.checkpoints.meta import rank
from tinytx_jax.checkpoints.store import CheckpointError, CheckpointStore, abstract_like
from tinytx_jax.configuration import ConfigError
from tinytx_jax.data import corpus
from tinytx_jax.training import metrics, population
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.compiled import measure_exact_match
from tinytx_jax.training.epoch_loop import Interrupted, interrupted_after, interrupted_during
from tinytx_jax.training.member_axis import Members
from tinytx_jax.training.metrics import EpochMetrics, format_epoch_line
from tinytx_jax.training.population import Group
from tinytx_jax.training.population_steps import GroupPrograms, build_programs
from tinytx_jax.training.resume import check_compatible, run_meta
from tinytx_jax.training.state import TrainState, count_params
from tinytx_jax.training.stopping import stop_reason
from tinytx_jax.training.task import Task, build_task


@dataclasses.dataclass
class PopulationLoop:
    """What a group's loop carries from epoch to epoch, and each of its steps."""

    task: Task
    group: Group
    programs: GroupPrograms
    store: CheckpointStore
    directory: Path
    log: Callable[[str], None]
    groups: int
    state: TrainState | None = None
    saved_epoch: int = 0
    stopped: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)  # by position
    latest: dict[int, EpochMetrics] = dataclasses.field(default_factory=dict)  # by position
    train_seconds: float = 0.0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def resume(self) -> bool:
        """Start fresh, or from the latest readable checkpoint; True when nothing is left."""
        fresh = self.programs.initial_state()
        self.state = fresh
        if not self.store.steps():
            return False
        wanted = [dataclasses.asdict(m) for m in self.group.members]

        def target_for_meta(meta: dict) -> TrainState:
            check_compatible(meta, self.task, self.store.directory)
            saved = [dict(m["member"]) for m in meta.get("population", {}).get("members", [])]
            if saved != wanted:
                raise CheckpointError(
                    f"cannot resume from {self.store.directory}: its members are not this "
                    "population's. Start over with --config.resume=False or use a new --workdir"
                )
            return abstract_like(fresh)

        steps = sorted(self.store.steps(), reverse=True)
        epoch, self.state, meta = self.store.restore_first_readable(
            steps, target_for_meta, self.log
        )
        self.saved_epoch = epoch
        for position, saved in enumerate(meta["population"]["members"]):
            if saved["metrics"]:
                self.latest[position] = EpochMetrics(**saved["metrics"])
            if saved["stopped_at"]:
                self.stopped[position] = (saved["stopped_at"], saved["reason"])
        if epoch >= self.task.run.train.epochs or len(self.stopped) == len(self.group.members):
            self.log(f"Nothing to train: the members in {self.store.directory} finished")
            return True
        count = len(self.group.members)
        self.log(f"Resuming {count} members from {self.store.directory} at epoch {epoch}")
        return False

    def __enter__(self) -> PopulationLoop:
        positions = tuple(m.index for m in self.group.members)
        self.metrics_log = metrics.MetricsLog(self.directory, self.saved_epoch, members=positions)
        return self

    def __exit__(self, *exc_info) -> None:
        self.metrics_log.close()

    def active(self) -> np.ndarray:
        return np.asarray([i not in self.stopped for i in range(len(self.group.members))])

    def run_epoch(self, epoch: int, signals: interrupt.SignalCatcher) -> bool:
        """Train an epoch, evaluate, record, decide, checkpoint; False when every member
        has stopped (raises Interrupted after a signal, once the checkpoint is saved)."""
        train = self.task.run.train
        seconds = self.train_epoch(epoch, signals)
        measured = self.evaluate(epoch)
        stops = self.record(measured, seconds)
        signal = parallel.agreed_signal(signals.received)
        if epoch % train.checkpoint_every == 0 or stops or signal or epoch == train.epochs:
            self.save(epoch, self.state)
        if signal:
            raise interrupted_after(epoch, signal, self.store)
        return len(self.stopped) < len(self.group.members)

    def train_epoch(self, epoch: int, signals: interrupt.SignalCatcher) -> float:
        """One epoch of every active member (stopped ones skip it, their state kept)."""
        steps = self.programs.steps
        epoch_start = time.perf_counter()
        chunked = len(steps.train_epoch.sizes()) > 1
        before = ChunkedEpoch.start_copy(self.state) if chunked else None
        done = steps.train_epoch.run(
            self.state,
            *self.task.train_data(epoch),
            stop=lambda: bool(parallel.agreed_signal(signals.received)),
            active=self.active(),
        )
        if done is None:
            raise self.interrupted_during(epoch, before, int(signals.received))
        self.state, self.train_loss = done
        self.train_loss.block_until_ready()
        seconds = time.perf_counter() - epoch_start
        self.train_seconds += seconds
        return seconds

    def evaluate(self, epoch: int) -> dict[int, EpochMetrics]:
        """Each active member's figures of the epoch, as its solo run measures them."""
        task, steps, train = self.task, self.programs.steps, self.task.run.train
        full = steps.evaluate_full is not None and epoch == train.epochs
        chunks = task.data.full_val_chunks if full else task.data.val_chunks
        val_loss, val_acc = (steps.evaluate_full if full else steps.evaluate)(
            self.state.params, *chunks
        )
        every = train.exact_match_every
        due = every and (epoch % every == 0 or epoch == train.epochs)
        exact = measure_exact_match(steps, self.state.params) if due else {}
        active = self.active()
        floors = () if self.programs.floors is None else (self.programs.floors,)
        flags = self.programs.members.flags(active)
        self.state, lr = steps.end_epoch(flags, self.state, val_loss, *floors)
        text_model = task.corpus.kind == corpus.TEXT
        train_loss, val_loss, val_acc, lr = (
            np.asarray(x) for x in (self.train_loss, val_loss, val_acc, lr)
        )
        targets = task.data.full_val_targets if full else task.data.val_targets
        return {
            i: EpochMetrics(
                epoch,
                float(train_loss[i]),
                float(val_loss[i]),
                float(val_acc[i]),
                targets,
                float(lr[i]),
                **{name: fractions[i] for name, fractions in exact.items()},
                val_bpc=float(val_loss[i]) / math.log(2) if text_model else None,
            )
            for i in np.flatnonzero(active)
        }

    def record(self, measured: dict[int, EpochMetrics], train_s: float) -> bool:
        """Each member's epoch in metrics.jsonl, TensorBoard and the log; its stop, if it
        stops here. True when a member stopped."""
        run = self.task.run
        tokens_per_step = run.train.batch_size * run.data.block_size
        elapsed = time.perf_counter() - self.start
        steps = np.asarray(self.state.step)
        best = np.asarray(self.state.best_val_loss)
        since_best = np.asarray(self.state.epochs_since_best)
        stopped_now = False
        for i, m in measured.items():
            member = self.group.members[i]
            self.latest[i] = m
            record = metrics.epoch_record(
                m, int(steps[i]), tokens_per_step, run.train.steps_per_epoch, train_s, elapsed
            )
            self.metrics_log.write({**record, "member": member.index})
            if m.epoch % run.train.print_every == 0:
                self.log(f"[member {member.index}] {format_epoch_line(m)}")
            if not (np.isfinite(m.train_loss) and np.isfinite(m.val_loss)):
                reason = f"Diverged at epoch {m.epoch}: the loss is not finite"
            else:
                reason = stop_reason(m, since_best[i], best[i], run.train)
            if reason:
                self.stopped[i] = (m.epoch, reason)
                self.log(f"[member {member.index}] {reason}")
                stopped_now = True
        return stopped_now

    def meta(self) -> dict:
        """The checkpoint's meta: the run's, with the best member's metrics, and every
        member's values, latest metrics and stop."""
        best = min(self.latest, key=lambda i: rank(self.latest[i].ranking()))
        meta = run_meta(self.task, self.latest[best])
        meta["population"] = {
            "group": self.group.index,
            "groups": self.groups,
            "members": [
                {
                    "member": dataclasses.asdict(member),
                    "metrics": dataclasses.asdict(self.latest[i]) if i in self.latest else None,
                    "stopped_at": self.stopped.get(i, (None, None))[0],
                    "reason": self.stopped.get(i, (None, None))[1],
                }
                for i, member in enumerate(self.group.members)
            ],
        }
        return meta

    def save(self, epoch: int, state: TrainState) -> None:
        meta = self.meta()
        self.store.save(epoch, state, meta, EpochMetrics(**meta["metrics"]).ranking())
        self.saved_epoch = epoch
        self.write_stops()

    def write_stops(self) -> None:
        stops = {self.group.members[i].index: stop for i, stop in self.stopped.items()}
        population.write_stops(self.directory, stops)

    def interrupted_during(self, epoch: int, before: TrainState, signum: int) -> Interrupted:
        save = (lambda: self.save(epoch - 1, before)) if self.latest else None
        return interrupted_during(epoch, signum, self.store, self.saved_epoch, save)

    def announce(self, members: Members, compile_s: float) -> None:
        task, devices = self.task, members.mesh.devices.size
        params = count_params(jax.tree.map(lambda x: x[0], self.state.params))
        self.log(
            f"Training {self.group.describe()} with JAX on {jax.devices()[0].platform}"
            f"{f' x {devices}' if devices > 1 else ''} ({params:,} params each, vocab "
            f"{task.vocab.size}, {task.data.train_tokens.shape[0]:,} train tokens, data: "
            f"{task.corpus.source}; compiled in {compile_s:.1f} s)"
        )

    def summarise(self) -> None:
        for i in range(len(self.group.members)):
            if i not in self.stopped:
                self.stopped[i] = (self.latest[i].epoch, "budget spent")
        self.write_stops()
        self.log(
            f"Trained {len(self.group.members)} members in "
            f"{time.perf_counter() - self.start:.1f} s "
            f"({self.train_seconds:.1f} s training); checkpoints in {self.store.directory}"
        )


def train_group(group: Group, directory: Path, groups: int, log: Callable[[str], None]) -> None:
    """Train one group of a population in `directory`: its task, programs and loop
    (`groups`: how many the population has, for its lines)."""
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
