"""Validation loss against wall-clock seconds, nanoGPT and the project, from one side-by-side run.

    ../shared/peers/compare_nanogpt.sh .venv/bin/python TORCH_PYTHON   # prints its log paths
    python -m benchmarks.loss_vs_time --nanogpt_log=DIR/nanogpt.log --project_dir=DIR/project \
        --out=docs/loss_vs_time.png

nanoGPT's seconds are its iterations' own times summed (each `iter N: ... time T ms` line;
the evaluation at a step falls in that step's time), from its first iteration; the
project's are `metrics.jsonl`'s `elapsed_s`, from before compilation. Neither counts the
process's start-up (imports, data loading); compare_nanogpt.sh prints both whole walls.
"""

from __future__ import annotations

import re
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model
from tinytx_jax.training.metrics import METRICS_FILE, read_metrics

_NANOGPT_LOG = flags.DEFINE_string("nanogpt_log", None, "nanoGPT's train.py output.", required=True)
_PROJECT_DIR = flags.DEFINE_string("project_dir", None, "The project run's workdir.", required=True)
_OUT = flags.DEFINE_string("out", "runs/loss_vs_time.png", "Where the plot goes.")
ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", re.M)
EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", re.M)


def nanogpt_curve(log: str) -> list[tuple[float, float]]:
    """(seconds, val loss) at each of nanoGPT's evaluations."""
    seconds, elapsed = {}, 0.0
    for step, ms in ITER.findall(log):
        elapsed += float(ms) / 1e3
        seconds[int(step)] = elapsed
    return [(seconds.get(int(step), 0.0), float(loss)) for step, loss in EVAL.findall(log)]


def main(argv: list[str]) -> None:
    del argv
    from matplotlib.figure import Figure

    nanogpt = nanogpt_curve(Path(_NANOGPT_LOG.value).read_text())
    records = read_metrics(Path(_PROJECT_DIR.value) / METRICS_FILE)
    project = [(r["elapsed_s"], r["val_loss"]) for r in records]
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    axis.plot(*zip(*nanogpt, strict=True), "o-", label="nanoGPT (CPU recipe, 2,000 iterations)")
    axis.plot(*zip(*project, strict=True), "s-", label="tinytx-jax configs/char_lm.py")
    axis.set(xlabel="seconds of training", ylabel="validation loss", ylim=(1.4, 3.0))
    axis.set_title(cpu_model(), fontsize=8)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(_OUT.value, dpi=100)
    for name, curve in (("nanoGPT", nanogpt), ("project", project)):
        print(f"{name}: val loss {curve[-1][1]:.4f} at {curve[-1][0]:.0f} s of training")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
