"""Populations: a member trains as its solo run, resumes bit for bit, spreads over
devices, is loaded alone, reported with its spread; bad input is one line."""

import re

import jax
import numpy as np
import pytest

from configs import default, fast
from tests.conftest import run_main
from tinytx_jax import parallel
from tinytx_jax.checkpoints.store import CheckpointError
from tinytx_jax.configuration import ConfigError
from tinytx_jax.inference import trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import metrics, population, population_report, train
from tinytx_jax.training.population_steps import build_programs
from tinytx_jax.training.task import build_task
from tinytx_jax.training.train_population import train_population

MEMBER = re.compile(r"^\[member (\d+)\] (.*)$")


def run_of(config, **values) -> RunConfig:
    config = config.copy_and_resolve_references()
    for name, value in values.items():
        config[name] = value
    return RunConfig.from_flat(config)


def member_lines(lines: list[str], index: int) -> list[str]:
    return [m.group(2) for m in map(MEMBER.match, lines) if m and int(m.group(1)) == index]


def solo_lines(run: RunConfig, workdir) -> list[str]:
    lines = []
    train.train_run(run, str(workdir), lines.append)
    return [line for line in lines if line.startswith(("Epoch", "Target", "Early"))]


@pytest.fixture(scope="module")
def fast_population(tmp_path_factory):
    """configs/fast.py, 2 seeds x 2 rates, 3 epochs, in this process (one device)."""
    workdir = tmp_path_factory.mktemp("population")
    run = run_of(fast.get_config(), epochs=3, seeds=2, sweep="lr=1e-2,5e-3")
    lines = []
    train_population(run, str(workdir), lines.append)
    return run, workdir, lines


def test_plan_crosses_swept_values_with_seeds_and_groups_shapes():
    run = run_of(default.get_config(), seeds=2, sweep="lr=1e-3,3e-3", groups="d_model=32,64")
    groups = population.plan(run)
    assert [g.values for g in groups] == [{"d_model": 32}, {"d_model": 64}]
    assert [(m.index, m.seed, m.values["lr"]) for m in groups[1].members] == [
        (4, 7, 1e-3),
        (5, 8, 1e-3),
        (6, 7, 3e-3),
        (7, 8, 3e-3),
    ]
    assert groups[1].run.model.d_model == 64 and groups[1].swept == {"lr": [1e-3, 1e-3, 3e-3, 3e-3]}
    assert groups[1].directory("w").as_posix() == "w/groups/1"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sweep": "lr="}, "config.sweep: lr has no values"),
        ({"sweep": ";"}, "config.sweep is empty"),
        ({"sweep": "d_model=32,64"}, "put it in config.groups"),
        ({"sweep": "lr=abc"}, "config.sweep: lr='abc' is not a float"),
        ({"groups": "seed=1,2"}, "'seed' is not a config field a member can vary"),
        ({"sweep": "lr=-1"}, "member 0 (seed 7, lr=-1.0): config.lr must be positive"),
    ],
)
def test_bad_plans_are_named(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        population.plan(run_of(default.get_config(), **values))


def test_a_member_trains_as_its_solo_run_on_the_fast_config(fast_population, tmp_path):
    _, _, lines = fast_population
    # Member 3: seed 8 and lr 5e-3; its solo run, alone in this process.
    solo = solo_lines(run_of(fast.get_config(), epochs=3, seed=8, lr=5e-3), tmp_path)
    assert len(solo) == 3 and member_lines(lines, 3) == solo  # to the last printed digit


def test_a_member_trains_as_its_solo_run_on_the_seeds_config(tmp_path):
    config = default.get_config()
    run = run_of(config, epochs=2, steps_per_epoch=50, seeds=2, sweep="warmup_steps=20,200")
    lines = []
    train_population(run, str(tmp_path / "population"), lines.append)
    solo_run = run_of(config, epochs=2, steps_per_epoch=50, seed=8, warmup_steps=20)
    assert member_lines(lines, 1) == solo_lines(solo_run, tmp_path / "solo")


def test_a_loaded_member_holds_its_solo_parameters(fast_population, tmp_path):
    _, workdir, _ = fast_population
    solo_run = run_of(fast.get_config(), epochs=3, seed=8, lr=5e-3)
    train.train_run(solo_run, str(tmp_path), lambda _: None)
    solo = trained.load_trained(tmp_path, "latest", log=lambda _: None)
    member = trained.load_trained(workdir, "latest", log=lambda _: None, member=3)
    assert member.meta["member"]["seed"] == 8
    jax.tree.map(np.testing.assert_array_equal, member.params, solo.params)


def test_resume_continues_every_member_bit_for_bit(fast_population, tmp_path):
    run, whole, _ = fast_population
    train_population(run_of(run.flat, epochs=2), str(tmp_path), lambda _: None)
    lines = []
    train_population(run, str(tmp_path), lines.append)
    assert any(line.startswith("Resuming 4 members") for line in lines)
    for workdir in (whole, tmp_path):
        records = metrics.read_metrics(workdir / metrics.METRICS_FILE)
        assert [r["epoch"] for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    resumed = metrics.read_metrics(tmp_path / metrics.METRICS_FILE)
    first = metrics.read_metrics(whole / metrics.METRICS_FILE)
    for a, b in zip(first, resumed, strict=True):
        assert (a["member"], a["train_loss"], a["val_loss"]) == (
            b["member"],
            b["train_loss"],
            b["val_loss"],
        )


def test_report_gives_each_member_and_the_spread_over_seeds(fast_population):
    _, workdir, lines = fast_population
    text = population_report.report(workdir)
    assert len(re.findall(r"^\s+\d+\s+\d+\s+lr=", text, re.M)) == 4
    assert re.search(r"lr=0\.005 \(2 seeds\): val_loss \d\.\d{4} \+- \d\.\d{4}", text)
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert text in "\n".join(lines)  # printed at the end of the run
    assert sorted(p.name for p in (workdir / "tensorboard").iterdir()) == [
        f"member_{i}" for i in range(4)
    ]


@pytest.mark.e2e
def test_eight_devices_give_the_figures_of_one(tmp_path):
    args = ["--mode=train", "--config=configs/fast.py", "--config.seeds=8"]
    args += ["--config.epochs=1", "--config.steps_per_epoch=10"]
    figures = []
    for devices in (1, 8):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        result = run_main(*args, f"--workdir={tmp_path / str(devices)}", env=env)
        assert result.returncode == 0, result.stderr
        assert (f"cpu x {devices}" in result.stdout) == (devices > 1)
        records = metrics.read_metrics(tmp_path / str(devices) / metrics.METRICS_FILE)
        figures.append([[r["member"], r["train_loss"], r["val_loss"]] for r in records])
    # The same members and epochs; their rounding differs (as data parallelism's does).
    np.testing.assert_allclose(figures[1], figures[0], rtol=2e-3)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.sweep=lr="], "config.sweep: lr has no values"),
        (["--config.sweep=d_model=32,64"], "put it in config.groups"),
        (
            ["--config.seeds=64", "--config.d_model=2048", "--config.mlp=True"],
            "64 members of the model need at least",
        ),
    ],
)
def test_bad_population_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = run_main("--mode=train", "--config=configs/fast.py", *args, f"--workdir={workdir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not workdir.exists()


@pytest.mark.e2e
def test_chat_picks_the_best_member_or_the_one_named(fast_population):
    _, workdir, _ = fast_population
    best = run_main("--mode=chat", f"--workdir={workdir}", "--prompt=hi")
    assert best.returncode == 0 and "the lowest validation loss" in best.stderr
    named = run_main("--mode=chat", f"--workdir={workdir}", "--prompt=hi", "--config.member=2")
    assert named.returncode == 0 and "(using member 2 (seed 7, lr=0.005)" in named.stderr
    wrong = run_main("--mode=chat", f"--workdir={workdir}", "--prompt=hi", "--config.member=4")
    assert wrong.returncode == 2
    assert "config.member=4 is out of range: the population in" in wrong.stderr


def test_a_stopped_member_skips_the_epoch_and_keeps_its_state():
    run = run_of(fast.get_config(), seeds=2)
    (group,) = population.plan(run)
    task = build_task(group.run, lambda _: None, mesh=parallel.make_mesh(1))
    programs = build_programs(task, group)
    before = jax.tree.map(np.asarray, programs.initial_state())
    state, _ = programs.steps.train_epoch.run(
        programs.initial_state(),
        *programs.task.train_data(1),
        stop=lambda: False,
        active=[True, False],
    )
    after = jax.tree.map(np.asarray, state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]), after, before)
    assert int(after.step[0]) == 25 and int(after.epoch[0]) == 1
    assert not np.array_equal(after.params["head"]["kernel"][0], before.params["head"]["kernel"][0])


def test_batched_members_agree_with_members_one_by_one(fast_population, tmp_path):
    run, workdir, _ = fast_population
    batched = run_of(run.flat, epochs=1, member_batching="vmap")
    train_population(batched, str(tmp_path), lambda _: None)
    figures = []
    for directory in (workdir, tmp_path):
        records = metrics.read_metrics(directory / metrics.METRICS_FILE)
        figures.append([[r["train_loss"], r["val_loss"]] for r in records if r["epoch"] == 1])
    # vmap batches the members' products: the same training, rounded otherwise.
    np.testing.assert_allclose(figures[1], figures[0], rtol=1e-3)


def test_a_solo_run_does_not_resume_from_a_population(fast_population):
    _, workdir, _ = fast_population
    with pytest.raises(CheckpointError, match="it holds a population"):
        train.train_run(run_of(fast.get_config(), epochs=4), str(workdir), lambda _: None)
