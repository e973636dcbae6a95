"""A population of K members in one process against K separate runs of the same config.

    python -m benchmarks.population [--configs=fast,default,char_lm] [--members=1,4,8,16]

For each config and K: the whole-process wall of `main.py --config.seeds=K`, and of the
K separate runs `main.py --config.seed=S` (seeds S = 7 ... 7 + K - 1), one after another,
as a user would run them; members per minute of each. One untimed epoch of each kind
first fills the compilation cache, as a user's earlier runs would. Separate runs beyond
--most_separate are not run: their wall is K times the mean of those that were, and the
table marks it "(est.)". The original's 400 epochs are cut to 5 and char_lm's to 2
(EPOCHS), so that the whole table takes minutes; fast.py runs as shipped.
Prints a Markdown table and the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model
from benchmarks.processes import main_py

_CONFIGS = flags.DEFINE_list("configs", ["fast", "default", "char_lm"], "configs/NAME.py each.")
_MEMBERS = flags.DEFINE_list("members", ["1", "4", "8", "16"], "Population sizes K.")
_MOST_SEPARATE = flags.DEFINE_integer("most_separate", 8, "Separate runs actually run per K.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/population_bench", "Where the runs go.")
_DATA = flags.DEFINE_string("data", "data/tinyshakespeare.txt", "char_lm's text.")
EPOCHS = {"default": 5, "char_lm": 2}  # a slice of the long runs: the table takes minutes


def config_args(name: str) -> list[str]:
    args = [f"--config=configs/{name}.py", "--mode=train", "--config.resume=False"]
    if name in EPOCHS:
        args.append(f"--config.epochs={EPOCHS[name]}")
    if name == "char_lm":
        args.append(f"--config.data_path={_DATA.value}")
    return args


def measure(name: str, members: int, workdir: Path) -> tuple[float, float, bool]:
    """Population wall, separate runs' wall, and whether the latter is an estimate."""
    for seeds in {1, members}:  # untimed, one epoch: then the compilation cache holds both
        warm = [f"--config.seeds={seeds}", "--config.epochs=1", f"--workdir={workdir / 'warm'}"]
        main_py(*config_args(name), *warm)
    population_s, _ = main_py(
        *config_args(name), f"--config.seeds={members}", f"--workdir={workdir / 'population'}"
    )
    walls = []
    for offset in range(min(members, _MOST_SEPARATE.value)):
        wall, _ = main_py(
            *config_args(name), f"--config.seed={7 + offset}", f"--workdir={workdir / 'solo'}"
        )
        walls.append(wall)
    separate_s = sum(walls) / len(walls) * members
    return population_s, separate_s, len(walls) < members


def main(argv: list[str]) -> None:
    del argv
    root = Path(_WORKDIR.value)
    print(f"CPU: {cpu_model()}")
    print("| config | K | population wall (s) | K separate runs (s) | ratio | members/min |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in _CONFIGS.value:
        for members in map(int, _MEMBERS.value):
            workdir = root / f"{name}_{members}"
            population_s, separate_s, estimated = measure(name, members, workdir)
            note = " (est.)" if estimated else ""
            per_minute = members / population_s * 60
            print(
                f"| {name} | {members} | {population_s:.1f} | {separate_s:.1f}{note} | "
                f"{population_s / separate_s:.2f} | {per_minute:.1f} vs "
                f"{members / separate_s * 60:.1f} |",
                flush=True,
            )
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
