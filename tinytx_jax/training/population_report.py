"""A population's report, read from its workdir (`population.json`, each group's
`stops.json` and `metrics.jsonl`): a table of members, mean +- std over the members of
equal values, and every member's validation curve (`curves.png`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tinytx_jax.checkpoints.members import read_plan
from tinytx_jax.training.metrics import CURVES_FILE, METRICS_FILE, read_metrics
from tinytx_jax.training.population import STOPS_FILE

FIGURES = ("val_loss", "val_acc", "exact_match", "typed_match")


def member_rows(workdir: str | os.PathLike) -> list[dict]:
    """One row per member: its values, last figures, epochs trained and why it stopped."""
    workdir = Path(workdir)
    plan = read_plan(workdir)
    if plan is None:
        raise FileNotFoundError(
            f"no population in {workdir}: train one with --config.seeds=N (or config.sweep)"
        )
    rows = []
    for group in plan["groups"]:
        directory = workdir / group["directory"]
        records = read_metrics(directory / METRICS_FILE, log=lambda _: None)
        stops_path = directory / STOPS_FILE
        stops = json.loads(stops_path.read_text()) if stops_path.exists() else {}
        for member in group["members"]:
            own = [r for r in records if r.get("member") == member["index"]]
            _, reason = stops.get(str(member["index"]), (None, ""))
            rows.append(
                {
                    **member,
                    "last": own[-1] if own else None,
                    "curve": [(r["epoch"], r["val_loss"]) for r in own],
                    "epochs": own[-1]["epoch"] if own else 0,
                    "reason": reason,
                    "reached": reason.startswith("Target reached"),
                }
            )
    return rows


def _values_label(values: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items()) or "(the config's)"


def report(workdir: str | os.PathLike) -> str:
    """The table of members and, per set of equal values, mean +- std over its seeds."""
    rows = member_rows(workdir)
    shown = [f for f in FIGURES if any(r["last"] and f in r["last"] for r in rows)]
    header = f"{'member':>6} {'seed':>6}  {'values':<28}" + "".join(f" {f:>11}" for f in shown)
    lines = [f"Population of {len(rows)} members in {workdir}:", header + "  epochs  stop"]
    for row in rows:
        last = row["last"] or {}
        figures = "".join(f" {last[f]:>11.4f}" if f in last else f" {'-':>11}" for f in shown)
        stop = row["reason"].split(":")[0] if row["reason"] else "training"
        lines.append(
            f"{row['index']:>6} {row['seed']:>6}  {_values_label(row['values']):<28}{figures}"
            f"  {row['epochs']:>6}  {stop}"
        )
    lines.append("Mean +- std over the members of equal values:")
    by_values: dict[str, list[dict]] = {}
    for row in rows:
        by_values.setdefault(_values_label(row["values"]), []).append(row)
    for label, members in by_values.items():
        trained = [m for m in members if m["last"]]
        parts = [
            f"{f} {_spread([m['last'][f] for m in trained if f in m['last']], 4)}" for f in shown
        ]
        parts.append(f"epochs {_spread([m['epochs'] for m in trained], 1)}")
        reached = sum(m["reached"] for m in members)
        parts.append(f"reached the targets {reached}/{len(members)}")
        lines.append(f"  {label} ({len(members)} seeds): " + ", ".join(parts))
    return "\n".join(lines)


def _spread(values: list[float], digits: int) -> str:
    """`mean +- std` (the sample standard deviation; one value: the value alone)."""
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {float(np.std(values, ddof=1)):.{digits}f}"


def plot_population(workdir: str | os.PathLike) -> Path:
    """Every member's validation loss against epochs, one colour per set of values, with
    the mean over its members in a thicker line."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state; imported on demand

    rows = member_rows(workdir)
    figure = Figure(figsize=(8, 4.5))
    axis = figure.subplots()
    labels = list(dict.fromkeys(_values_label(r["values"]) for r in rows))
    for colour, label in zip(_colours(len(labels)), labels, strict=True):
        curves = [r["curve"] for r in rows if _values_label(r["values"]) == label and r["curve"]]
        for curve in curves:
            axis.plot(*zip(*curve, strict=True), color=colour, alpha=0.35, linewidth=0.8)
        shortest = min((len(c) for c in curves), default=0)
        if shortest:
            mean = np.mean([[v for _, v in c[:shortest]] for c in curves], axis=0)
            epochs = [e for e, _ in curves[0][:shortest]]
            name = f"{label}: " if len(labels) > 1 else ""
            mean_label = f"{name}mean of {len(curves)} members, up to the first stop"
            axis.plot(epochs, mean, color=colour, linewidth=2, label=mean_label)
    axis.set(xlabel="epoch", ylabel="validation loss", yscale="log", title="population")
    axis.legend(fontsize="small")
    figure.tight_layout()
    out = Path(workdir) / CURVES_FILE
    figure.savefig(out, dpi=100)
    return out


def _colours(count: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(count)]
