"""The README's headline figures, re-measured in one command, with the CPU they came from.

    python -m benchmarks.headline [--runs=2] [--skip_default] [--workdir=runs/headline]

Each figure is a whole `main.py` process, as a user runs it: the fast config (wall, epoch
it stopped at, val_loss); the seed's default run (wall, final val_loss and val_acc); and
`configs/dialogs.py` on data/faq_stdlib.jsonl (wall, exact match from --mode=eval; first
`python data/prepare_faq.py`). Over --runs runs it prints each figure as a range.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model
from benchmarks.processes import main_py

_RUNS = flags.DEFINE_integer("runs", 2, "Runs of each figure.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/headline", "Where the runs' workdirs go.")
_SKIP_DEFAULT = flags.DEFINE_bool("skip_default", False, "Leave out the ~3-minute seed run.")
FAQ = Path("data/faq_stdlib.jsonl")
EPOCH = re.compile(r"^Epoch (\d+), .*val_loss=([\d.]+) val_acc=([\d.]+)", re.M)


def train_figures(workdir: Path, *args: str) -> dict[str, float]:
    shutil.rmtree(workdir, ignore_errors=True)
    wall, out = main_py("--mode=train", f"--workdir={workdir}", *args)
    epoch, val_loss, val_acc = EPOCH.findall(out)[-1]
    return {
        "wall s": wall,
        "epoch": int(epoch),
        "val_loss": float(val_loss),
        "val_acc": float(val_acc),
    }


def faq_figures(workdir: Path) -> dict[str, float]:
    figures = train_figures(workdir, "--config=configs/dialogs.py", f"--config.data_path={FAQ}")
    _, out = main_py("--mode=eval", f"--workdir={workdir}")
    matched = re.search(r"Exact match \(training conversations\): (\d+)/(\d+)", out)
    figures["exact"] = int(matched.group(1))
    return figures


def show(name: str, runs: list[dict[str, float]]) -> None:
    parts = []
    for key in runs[0]:
        low, high = min(r[key] for r in runs), max(r[key] for r in runs)
        fmt = {"epoch": "{:.0f}", "exact": "{:.0f}", "wall s": "{:.1f}"}.get(key, "{:.4f}")
        shown = fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"
        parts.append(f"{key} {shown}")
    print(f"{name:<28} {', '.join(parts)}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    root = Path(_WORKDIR.value)
    print(f"CPU: {cpu_model()}; {_RUNS.value} runs each, whole processes", flush=True)
    cases = {"configs/fast.py": lambda w: train_figures(w, "--config=configs/fast.py")}
    if not _SKIP_DEFAULT.value:
        cases["default (the seed's run)"] = lambda w: train_figures(w)
    if FAQ.exists():
        cases["configs/dialogs.py on FAQ"] = faq_figures
    else:
        print(f"(skipping the FAQ: run `python data/prepare_faq.py` to write {FAQ})")
    for i, (name, measure) in enumerate(cases.items()):
        show(name, [measure(root / f"{i}_{run}") for run in range(_RUNS.value)])


if __name__ == "__main__":
    app.run(main)
