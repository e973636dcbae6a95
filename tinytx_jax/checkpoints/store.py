"""Orbax checkpoints of the whole train state plus a JSON meta item (vocabulary, model).

Layout: `WORKDIR/checkpoints/<epoch>/{state,meta}`. Saves are asynchronous; a save is
committed by orbax's atomic rename, so a process killed at any moment leaves the last
committed checkpoint intact, and unfinished temporaries are cleaned on the next start.
Retention keeps the latest `keep` checkpoints *and* the best one (`rank`): orbax's
`max_to_keep` together with `best_fn` would delete the latest, so the two preservation
policies are combined explicitly.

Orbax does not checksum array data, so once a save has committed the SHA-256 digest of
each of its files is recorded in `<epoch>/digests.json` and checked before a restore: a
flipped byte makes the checkpoint unreadable (reported, then the previous one is used)
instead of loading as other weights. A step without the record (saved before it existed,
or killed before it was written) is read as before; a damaged record is reported as such,
with how to load the step unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tinytx_jax.checkpoints.meta import SCHEMA_VERSION, rank

DIGESTS_FILE = "digests.json"
ITEMS = ("state", "meta")


class DigestMismatch(Exception):
    """A checkpoint file's content is not what was saved."""


class DigestsUnreadable(Exception):
    """The record of a checkpoint's digests is itself damaged: its files cannot be checked."""


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for item in ITEMS for p in (step_dir / item).rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digests(step_dir: Path) -> None:
    """Record the digests of a committed step (written aside, then renamed: atomic)."""
    if not step_dir.is_dir():
        return  # pruned by retention meanwhile
    digests = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
    partial = step_dir / (DIGESTS_FILE + ".tmp")
    partial.write_text(json.dumps(digests, indent=0, sort_keys=True))
    partial.rename(step_dir / DIGESTS_FILE)


def verify_digests(step_dir: Path) -> None:
    """Raise DigestMismatch if a recorded file is missing or differs, DigestsUnreadable if
    the record cannot be read."""
    recorded = step_dir / DIGESTS_FILE
    if not recorded.exists():
        return
    try:
        digests = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DigestsUnreadable(f"{recorded} is unreadable ({error})") from None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise DigestsUnreadable(f"{recorded} is not a table of file digests")
    for name, expected in digests.items():
        path = step_dir / name
        if not path.is_file() or _sha256(path) != expected:
            raise DigestMismatch(f"digest mismatch: {name} is not what was saved")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def checkpoint_dir(workdir: str | os.PathLike) -> Path:
    return Path(workdir).expanduser().absolute() / "checkpoints"


class CheckpointStore:
    """Saves and restores `(state, meta)` pairs under `WORKDIR/checkpoints`."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(get_metric_fn=rank, reverse=True, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=rank,
            best_mode="min",
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True,
            enable_background_delete=not read_only,  # pruning old steps never blocks a save
        )
        self._failed = False
        self._undigested: list[int] = []  # saved, digests not yet written (after commit)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, epoch: int, state: Any, meta: dict, metrics: dict[str, float]) -> float:
        """Start an asynchronous save ranked by `metrics` (`val_loss`, and `exact_match`
        when measured); returns the seconds the caller was blocked."""
        start = time.perf_counter()
        with self._writing(f"the checkpoint of epoch {epoch}"):
            self._write_digests()  # of the previous save: committed by now, as a rule
            self.manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                metrics=metrics,
                force=True,
            )
        if jax.process_index() == 0:
            self._undigested.append(epoch)
        return time.perf_counter() - start

    def _write_digests(self) -> None:
        """Digests of every save since the last call, once it has committed."""
        if self._undigested:
            self.manager.wait_until_finished()
            for epoch in self._undigested:
                write_digests(self.directory / str(epoch))
            self._undigested.clear()

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """An asynchronous save that failed (full disk, permissions) surfaces at the next
        save or wait: one CheckpointError, once; the committed checkpoints stay."""
        try:
            yield
        except Exception as error:
            if self._failed:
                return
            self._failed = True
            committed = [s for s in self.steps() if (self.directory / str(s)).is_dir()]
            if not committed:  # the directory itself may be gone (deleted during the save)
                raise CheckpointError(
                    f"could not write {what} in {self.directory} ({one_line(error)}) and no "
                    "committed checkpoint is left there: check the workdir, then train anew"
                ) from None
            raise CheckpointError(
                f"could not write {what} in {self.directory} ({one_line(error)}); the last "
                f"committed checkpoint is kept (epoch {committed[-1]}): free disk space or "
                "check permissions, then run the same command to resume"
            ) from None

    def read_meta(self, epoch: int) -> dict:
        restored = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CheckpointError(
                f"checkpoint meta in {self.directory / str(epoch)} has schema version {version}, "
                f"this tinytx-jax reads version {SCHEMA_VERSION}: use the tinytx-jax that wrote "
                "it, or train anew"
            )
        return meta

    def restore(self, epoch: int, abstract_state: Any) -> Any:
        verify_digests(self.directory / str(epoch))
        restored = self.manager.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def restore_params(self, epoch: int, abstract_params: Any) -> Any:
        """Only the parameters of the saved train state (a partial restore: the optimiser
        moments are never read), for chat, eval and serving."""
        verify_digests(self.directory / str(epoch))
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
        target = {"params": abstract_params}
        restored = checkpointer.restore(
            self.directory / str(epoch) / "state",
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
        return restored["params"]

    def restore_first_readable(
        self,
        order: list[int],
        target_for_meta: Callable[[dict], Any],
        log: Callable[[str], None],
        params_only: bool = False,
        remedy: str = "train anew with --config.resume=False or a new --workdir",
    ) -> tuple[int, Any, dict]:
        """Restore the first checkpoint in `order` that reads back whole.

        `target_for_meta` checks a checkpoint's meta and returns the abstract state (or,
        with `params_only`, the abstract parameters) to restore into. An unreadable
        checkpoint (truncated, deleted files) is reported and skipped; an unknown schema,
        or a meta that `target_for_meta` rejects with a CheckpointError, stops with that
        reason; none readable is a CheckpointError ending with `remedy`.
        """
        restore = self.restore_params if params_only else self.restore
        problems, unverifiable = [], []
        for epoch in order:
            try:
                meta = self.read_meta(epoch)
                state = restore(epoch, target_for_meta(meta))
            except CheckpointError:
                raise
            except DigestsUnreadable:
                unverifiable.append(epoch)
                log(f"Checkpoint at epoch {epoch} cannot be checked: its digests are unreadable")
                continue
            except Exception as error:  # any failure to read back means unreadable
                problems.append(f"epoch {epoch}: {one_line(error)}")
                log(f"Checkpoint at epoch {epoch} is unreadable ({one_line(error)}); skipping it")
                continue
            return epoch, state, meta
        if unverifiable:
            raise CheckpointError(self._unverifiable_message(unverifiable, problems))
        raise CheckpointError(
            f"no readable checkpoint in {self.directory} ({'; '.join(problems)}): {remedy}"
        )

    def _unverifiable_message(self, epochs: list[int], problems: list[str]) -> str:
        records = [str(self.directory / str(epoch) / DIGESTS_FILE) for epoch in epochs]
        others = f"; the others are unreadable ({'; '.join(problems)})" if problems else ""
        return (
            f"no checkpoint in {self.directory} could be checked: the digests of epochs "
            f"{', '.join(map(str, epochs))} are unreadable (a damaged {DIGESTS_FILE})"
            f"{others}. If the weights are intact, delete the damaged records to load them "
            f"unverified: rm {' '.join(records)}"
        )

    def reload(self) -> None:
        """Re-read the step directories (after files were moved)."""
        self.manager.reload()

    def wait(self) -> None:
        with self._writing("a checkpoint"):
            self.manager.wait_until_finished()
            self._write_digests()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()  # waits for any save still being written

    def close(self) -> None:
        with self._writing("a checkpoint"):
            self.manager.wait_until_finished()
            self._write_digests()
            self.manager.close()


def one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def abstract_like(tree: Any) -> Any:
    """Shape/dtype (and sharding) stand-ins, so restore rebuilds the exact pytree types."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
