"""What each option of the modern recipe is worth: validation loss at a fixed time budget,
over several seeds.

    python -m benchmarks.ablation [--data=data/tinyshakespeare.txt] [--budget_s=40] [--seeds=4]

For `configs/char_lm.py` and for that recipe with one option turned back to its old value
(learned positions, no QK-norm, GELU, random output projections, no soft-cap, AdamW,
cosine), each in turn: time the step (`benchmarks.train_speed`), give the run as many
steps as fit in --budget_s seconds of training, train --seeds members of it as one
population (`--config.seeds`, one `main.py` process) and read each member's whole-split
validation loss at its last epoch. Prints a Markdown table (mean +- std over the seeds;
a difference from the recipe counts as real when it exceeds twice its standard error)
and the CPU.
"""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path

from absl import app, flags, logging

from benchmarks.machine import cpu_model
from benchmarks.processes import main_py
from benchmarks.train_speed import measure_train_speed
from configs import char_lm
from tinytx_jax.training import metrics

_DATA = flags.DEFINE_string("data", "data/tinyshakespeare.txt", "Text to train on.")
_BUDGET = flags.DEFINE_float("budget_s", 40.0, "Seconds of training each run gets.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Where the runs' workdirs go.")
_SEEDS = flags.DEFINE_integer("seeds", 4, "Members (seeds) per run.")
EPOCHS = 4  # validations per run; the last scores the whole split
# Each option of the recipe, and the value that turns it off.
WITHOUT = {
    "rotary positions": {"position": "learned"},
    "QK-norm": {"qk_norm": False},
    "ReLU² MLP": {"mlp_activation": "gelu"},
    "zero-init outputs": {"zero_init_outputs": False},
    "logit soft-cap": {"logit_softcap": 0.0},
    "Muon": {"optimizer": "adamw"},
    "warm-up/stable/decay": {"lr_schedule": "cosine"},
}


def run(name: str, overrides: dict) -> tuple[float, int, list[float]]:
    """ms per step, steps in the budget, and each seed's final whole-split validation loss."""
    config = char_lm.get_config()
    config.data_path = _DATA.value
    config.update(overrides)
    config.steps_per_epoch, config.epochs = 50, 1
    ms = measure_train_speed(config, epochs=3)["ms_per_step"]
    steps = int(_BUDGET.value * 1e3 / ms) // EPOCHS * EPOCHS
    workdir = Path(_WORKDIR.value) / re.sub(r"\W+", "_", name)
    shutil.rmtree(workdir, ignore_errors=True)
    flags_ = [f"--config.{key}={value}" for key, value in overrides.items()]
    main_py(
        "--mode=train",
        "--config=configs/char_lm.py",
        f"--config.data_path={_DATA.value}",
        f"--workdir={workdir}",
        f"--config.epochs={EPOCHS}",
        f"--config.steps_per_epoch={steps // EPOCHS}",
        "--config.max_new_tokens=1",  # the sample is not what is measured
        f"--config.seeds={_SEEDS.value}",
        *flags_,
    )
    records = metrics.read_metrics(workdir / metrics.METRICS_FILE)
    last = {r.get("member", 0): r["val_loss"] for r in records if r["epoch"] == EPOCHS}
    return ms, steps, [last[member] for member in sorted(last)]


def spread(losses: list[float]) -> str:
    if len(losses) == 1:
        return f"{losses[0]:.4f}"
    return f"{statistics.mean(losses):.4f} +- {statistics.stdev(losses):.4f}"


def difference(losses: list[float], recipe: list[float]) -> str:
    """The mean difference, and whether it exceeds twice its standard error."""
    delta = statistics.mean(losses) - statistics.mean(recipe)
    if min(len(losses), len(recipe)) < 2:
        return f"{delta:+.4f}"
    error = (
        statistics.variance(losses) / len(losses) + statistics.variance(recipe) / len(recipe)
    ) ** 0.5
    return f"{delta:+.4f} ({'beyond' if abs(delta) > 2 * error else 'within'} 2 s.e. {error:.4f})"


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    print(
        f"CPU: {cpu_model()}; {_DATA.value}; {_BUDGET.value:.0f} s of training per run; "
        f"{_SEEDS.value} seeds each"
    )
    ms, steps, recipe = run("recipe", {})
    print(
        "| run | ms/step | steps in the budget | val loss | vs the recipe |\n|---|---|---|---|---|"
    )
    print(f"| configs/char_lm.py | {ms:.1f} | {steps} | {spread(recipe)} | |", flush=True)
    for option, overrides in WITHOUT.items():
        ms, steps, losses = run(option, overrides)
        print(
            f"| without {option} | {ms:.1f} | {steps} | {spread(losses)} | "
            f"{difference(losses, recipe)} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
