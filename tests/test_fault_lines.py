"""The third round of faults: each ends in one clear line (exit 2) or does the right thing,
and nothing is lost."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, chat_request, run_main
from tinytx_jax import commands, configuration
from tinytx_jax.checkpoints.store import DIGESTS_FILE, CheckpointError
from tinytx_jax.data import corpus
from tinytx_jax.inference import trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.serving import openai_api, service
from tinytx_jax.text import dialogs, user_text
from tinytx_jax.training import train
from tinytx_jax.training.task import build_task


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr + result.stdout
    return [line for line in result.stderr.splitlines() if line.strip()]


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def largest_array_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture
def text_copy(text_run, tmp_path):
    """A copy of the two-epoch text run, to damage."""
    shutil.copytree(text_run[0], tmp_path / "source")
    return tmp_path / "source", text_run[1]


def fine_tune_config(config, source):
    tune = config.copy_and_resolve_references()
    tune.init_from, tune.epochs = str(source), 1
    tune.checkpoint = "latest"
    return tune


@pytest.mark.parametrize("damaged", ["array", "metadata"])
def test_init_from_a_damaged_checkpoint_falls_back_as_chat_does(text_copy, tmp_path, damaged):
    source, config = text_copy
    latest = source / "checkpoints" / "2"
    flip_a_byte(largest_array_file(latest) if damaged == "array" else latest / "state/_METADATA")
    notices = []
    task = build_task(RunConfig.from_flat(fine_tune_config(config, source)), log=notices.append)
    assert task.init_source.epoch == 1
    assert notices == [notices[0]] and "Checkpoint at epoch 2 is unreadable" in notices[0]


def test_init_from_with_no_readable_checkpoint_is_one_line_naming_it(text_copy, tmp_path):
    source, config = text_copy
    for step in ("1", "2"):
        flip_a_byte(largest_array_file(source / "checkpoints" / step))
    with pytest.raises(configuration.ConfigError) as error:
        build_task(RunConfig.from_flat(fine_tune_config(config, source)), log=lambda _: None)
    message = str(error.value)
    assert message.startswith(f"config.init_from={str(source)!r}: no readable checkpoint")
    assert "digest mismatch" in message and "\n" not in message
    assert message.endswith("start from another run, or without config.init_from")


def test_fine_tuning_a_run_in_its_own_workdir_reads_it_before_setting_it_aside(text_copy):
    source, config = text_copy
    tune = fine_tune_config(config, source)
    tune.resume = False
    lines = []
    train.train_and_evaluate(tune, str(source), log=lines.append)
    assert any(ln.startswith(f"Starting from the parameters of {source} (epoch 2)") for ln in lines)
    moved = [ln for ln in lines if ln.startswith("Starting over")]
    kept = source / moved[0].rsplit(" ", 1)[1] / "checkpoints" / "2"
    assert kept.is_dir()  # the source's checkpoints are kept, set aside
    assert trained.load_trained(source, "latest", log=lambda _: None).epoch == 1


def test_unreadable_digests_everywhere_say_so_and_how_to_load_unverified(trained_workdir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    records = sorted((workdir / "checkpoints").glob(f"*/{DIGESTS_FILE}"))
    assert records
    for record in records:
        record.write_text("{not json")
    notices = []
    with pytest.raises(CheckpointError) as error:
        trained.load_trained(workdir, log=notices.append)
    message = str(error.value)
    assert "digests of epochs" in message and "unreadable" in message and "\n" not in message
    assert all(str(record) in message.rsplit(": rm ", 1)[1] for record in records)
    assert all("digests are unreadable" in n for n in notices)
    for record in records:  # the remedy the message gives
        record.unlink()
    assert trained.load_trained(workdir, log=lambda _: None).params is not None


def test_a_message_empty_once_normalised_is_refused_by_the_api(trained_workdir):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    chat_service = service.ChatService(
        model, None, service.ServeSettings(None, None, dialogs.SYSTEM_PROMPT), "fast"
    )
    request = chat_request("\u200b\u200b\u200b")
    with pytest.raises(openai_api.ApiError) as error:
        chat_service.prompt(request)
    assert error.value.status == 400 and "empty once normalised" in str(error.value)


def test_a_dialog_turn_of_sixty_thousand_commas_loads_at_once(tmp_path):
    path = tmp_path / "d.jsonl"
    pairs = [("," * 60_000, "no."), ("x" + " ,thanks" * 40 + "x", "ok."), ("hi", "hello!")]
    path.write_text("".join(json.dumps({"user": u, "assistant": a}) + "\n" for u, a in pairs))
    steps = user_text.parse_steps("unicode,spaces,case,punctuation,courtesy,known")
    start = time.perf_counter()
    loaded = corpus.load_corpus(str(path), 1, corpus.UserTyping(steps))
    assert time.perf_counter() - start < 5
    assert loaded.conversations[0].turns[0][0] == "," * 60_000  # nothing but marks: kept


@pytest.mark.e2e
def test_eval_of_a_text_model_reports_its_validation_figures(text_run):
    result = run_main("--mode=eval", f"--workdir={text_run[0]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Checkpoint epoch ") and "val_loss=" in result.stdout
    assert "Exact match" not in result.stdout and "Typed as" not in result.stdout
    error_lines(result)


@pytest.mark.e2e
def test_a_prompt_empty_once_normalised_is_refused_as_an_empty_one(trained_workdir):
    result = run_main("--mode=chat", f"--workdir={trained_workdir}", "--prompt=\u200b\u200b\u200b")
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result)[-1] == f"error: {commands.NO_USABLE_PROMPT}"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "data" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("prepare_shakespeare.py", ["--from={text}", "--out={file}/tiny.txt"], "is a file"),
        ("prepare_faq.py", ["--out={file}/faq.jsonl", "--pairs=2"], "is a file, not a folder"),
        ("prepare_faq.py", ["--pairs=-1", "--out={tmp}/faq.jsonl"], "--pairs=-1"),
    ],
)
def test_the_data_scripts_fail_in_one_line(script, args, expected, tmp_path):
    (tmp_path / "file").write_text("x")
    names = {"file": tmp_path / "file", "tmp": tmp_path, "text": tmp_path / "file"}
    result = run_script(script, *(arg.format(**names) for arg in args))
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "faq.jsonl").exists()
