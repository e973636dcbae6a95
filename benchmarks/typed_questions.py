"""Exact answers per way of typing a question: before issue #18's recipe and with it.

    python -m benchmarks.typed_questions [--data=data/faq_stdlib.jsonl] [--runs=1] [--recipes=after]

Trains `configs/dialogs.py` on the data as shipped ("after") and with the recipe of before
#18 ("before": no normalisation, no retyped turns, learned positions, AdamW on two CPU
devices, exact match every epoch), each a whole `main.py --mode=train` process, then asks
every training question as typed in each `typed_variants.VARIANTS` entry (`main.py
--mode=eval`), with the recipe's `known` normalisation step and without it (what the model
alone answers). Prints one table row per variant, the training walls and the CPU.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model
from benchmarks.processes import main_py

_DATA = flags.DEFINE_string("data", "data/faq_stdlib.jsonl", "Dialogs to train and ask.")
_RUNS = flags.DEFINE_integer("runs", 1, "Runs of each recipe.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/typed", "Where the runs' workdirs go.")
_RECIPES = flags.DEFINE_multi_enum(
    "recipes", ["before", "after"], ["before", "after"], "Which recipes to train and ask."
)
BEFORE = (
    "--config.normalize_user=",
    "--config.augment_user=0.0",
    "--config.data_repeat=2",
    "--config.epochs=20",
    "--config.position=learned",
    "--config.optimizer=adamw",
    "--config.cpu_devices=0",
    "--config.exact_match_every=1",
    "--config.validation_fraction=0.1",
    "--config.target_typed_match=0.0",
)
EXACT = re.compile(r"Exact match \(training conversations\): (\d+)/(\d+)")
TYPED = re.compile(r"Typed as (\w+): (\d+)/(\d+)")
ALONE = re.compile(r"Typed as (\w+): .*without matching known turns (\d+)/(\d+)")


Scores = dict[str, float]


def measure(workdir: Path, *flags_: str) -> tuple[float, Scores, Scores]:
    """Training wall and exact-match percentage per way of typing, then the same without
    the `known` step (equal to the first where the run has none)."""
    shutil.rmtree(workdir, ignore_errors=True)
    data = f"--config.data_path={_DATA.value}"
    wall, _ = main_py(
        "--mode=train", "--config=configs/dialogs.py", data, f"--workdir={workdir}", *flags_
    )
    _, out = main_py("--mode=eval", f"--workdir={workdir}")
    matched = EXACT.search(out)
    scores = {"as in the file": 100 * int(matched.group(1)) / int(matched.group(2))}
    scores.update({name: 100 * int(m) / int(n) for name, m, n in TYPED.findall(out)})
    alone = {**scores, **{name: 100 * int(m) / int(n) for name, m, n in ALONE.findall(out)}}
    return wall, scores, alone


def span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return (
        fmt.format(low)
        if fmt.format(low) == fmt.format(high)
        else f"{fmt.format(low)}-{fmt.format(high)}"
    )


def main(argv: list[str]) -> None:
    del argv
    root = Path(_WORKDIR.value)
    print(f"CPU: {cpu_model()}; data: {_DATA.value}; {_RUNS.value} run(s) each", flush=True)
    flags_of = {"before": BEFORE, "after": ()}
    runs = {
        recipe: [measure(root / f"{recipe}_{i}", *flags_of[recipe]) for i in range(_RUNS.value)]
        for recipe in _RECIPES.value
    }
    # (title, recipe, which scores): 1 as chat answers, 2 without the `known` step
    columns = [("before", "before", 1), ("after", "after", 1), ("after, model alone", "after", 2)]
    columns = [column for column in columns if column[1] in runs]
    print(f"| typed as | {' | '.join(c[0] for c in columns)} |\n|---{'|---' * len(columns)}|")
    for variant in next(iter(runs.values()))[0][1]:
        cells = [span([r[i][variant] for r in runs[k]], "{:.1f}%") for _, k, i in columns]
        print(f"| {variant} | {' | '.join(cells)} |")
    walls = [span([r[0] for r in runs[k]], "{:.0f} s") if i == 1 else "" for _, k, i in columns]
    print(f"| training wall (whole process) | {' | '.join(walls)} |")


if __name__ == "__main__":
    app.run(main)
