"""Your own data: JSONL dialogs and plain text load, render, train, chat; bad data is named."""

import json

import numpy as np
import pytest

from configs import default
from tests.conftest import run_main
from tinytx_jax import configuration
from tinytx_jax.data import corpus, split
from tinytx_jax.inference import chat, generation, sampling, trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.text import dialogs
from tinytx_jax.training import train
from tinytx_jax.training.task import build_task

MULTI_TURN = {
    "system": "Be brief.",
    "turns": [{"user": "a", "assistant": "b"}, {"user": "c", "assistant": "d"}],
}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_multi_turn_and_shorthand_render_exactly(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN, {"user": "hi", "assistant": "yo"}])
    loaded = corpus.load_corpus(str(path), repeat=2)
    one_pass = (
        "<system>Be brief.</system>\n<user>a</user>\n<assistant>b</assistant>\n"
        "<user>c</user>\n<assistant>d</assistant>\n<eot>\n"
        "<system>You are helpful.</system>\n<user>hi</user>\n<assistant>yo</assistant>\n<eot>\n"
    )
    assert loaded.text == one_pass * 2
    assert loaded.kind == corpus.DIALOGS and len(loaded.conversations) == 2
    replies = "".join(c for c, m in zip(loaded.text, loaded.reply_mask, strict=True) if m)
    assert replies == "b</assistant>d</assistant>yo</assistant>" * 2
    builtin = corpus.load_corpus("", 300)
    assert builtin.text == dialogs.builtin_corpus(300)


def test_prompt_with_history_matches_the_training_rendering():
    prompt = dialogs.render_prompt("c", "Be brief.", (("a", "b"),))
    rendered, _ = dialogs.render_conversations(
        (dialogs.Conversation((("a", "b"), ("c", "d")), "Be brief."),)
    )
    assert rendered.startswith(prompt)


@pytest.fixture
def tiny_config(small_config):
    small_config.epochs = 2
    small_config.steps_per_epoch = 5
    small_config.block_size = 32
    small_config.data_repeat = 20
    return small_config


def test_jsonl_trains_with_either_loss_and_schedule(tmp_path, tiny_config):
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN, {"user": "hi", "assistant": "yo"}])
    tiny_config.data_path = str(path)
    tiny_config.loss_on = "assistant"
    tiny_config.lr_schedule = "cosine"
    tiny_config.warmup_steps = 2
    task = build_task(RunConfig.from_flat(tiny_config))
    mask = task.corpus.reply_mask
    val_split = mask[split.seed_cutoff(len(mask), tiny_config.validation_fraction) :]
    assert task.data.val_targets == int(val_split[1:].sum()) < len(val_split) - 1
    _, history = train.train_and_evaluate(tiny_config, str(tmp_path / "run"), log=lambda _: None)
    assert len(history) == 2 and all(np.isfinite(m.train_loss) for m in history)
    assert history[-1].lr == pytest.approx(tiny_config.min_lr, rel=1e-3)  # cosine ends at min_lr


@pytest.mark.e2e
def test_plain_text_trains_and_samples(tmp_path, tiny_config):
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat. " * 40)
    tiny_config.data_path = str(path)
    workdir = tmp_path / "run"
    _, history = train.train_and_evaluate(tiny_config, str(workdir), log=lambda _: None)
    assert len(history) == 2
    result = run_main(
        "--mode=sample", f"--workdir={workdir}", "--prompt=the ", "--config.max_new_tokens=30"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the ") and len(result.stdout.rstrip("\n")) == 34
    result = run_main("--mode=chat", f"--workdir={workdir}")
    assert result.returncode == 2 and "use --mode=sample" in result.stderr


def test_non_ascii_dialogs_train_and_chat(tmp_path, tiny_config):
    path = write_jsonl(
        tmp_path / "u.jsonl",
        [
            {"user": "你好", "assistant": "こんにちは"},
            {"user": "café?", "assistant": "très bien"},
        ],
    )
    config = tiny_config
    config.update(
        data_path=str(path),
        data_repeat=150,
        block_size=128,
        batch_size=8,
        steps_per_epoch=25,
        epochs=30,
        lr=1e-2,
        warmup_steps=10,
        lr_schedule="cosine",
        min_lr=1e-4,
        loss_on="assistant",
    )
    _, history = train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda _: None)
    assert history[-1].val_acc > 0.9
    model = trained.load_trained(tmp_path / "run", log=lambda _: None)
    assert "你" in model.vocab.chars and "é" in model.vocab.chars
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    session = chat.ChatSession(generator, dialogs.SYSTEM_PROMPT)
    assert session.answer("你好") == "こんにちは"
    assert session.answer("café?") == "très bien"


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "bad.jsonl",
            b'{"user": "hi", "assistant": "yo"}\n{"user": "hi"\n',
            "bad.jsonl:2: not JSON",
        ),
        ("bad.jsonl", b'{"user": "hi"}\n', "bad.jsonl:1: missing field 'assistant'"),
        (
            "bad.jsonl",
            b'\n{"user": 3, "assistant": "x"}\n',
            "bad.jsonl:2: field 'user' must be a string, got int",
        ),
        ("bad.jsonl", b'{"turns": [{"user": "a"}]}\n', "bad.jsonl:1 (turn 1): missing field"),
        ("bad.jsonl", b"{}\n", "bad.jsonl:1: missing field 'turns'"),
        ("empty.txt", b"  \n", "empty.txt: the file is empty"),
        ("latin1.txt", b"ok\nna\xefve\n", "latin1.txt:2: not valid UTF-8"),
        ("short.txt", b"too short", "too few for config.block_size=256"),
        ("data.csv", b"a,b\n", "unknown data format '.csv'"),
    ],
)
def test_bad_data_is_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    config = default.get_config()
    config.data_path = str(path)
    with pytest.raises((corpus.DataError, configuration.ConfigError)) as error:
        build_task(RunConfig.from_flat(config))
    assert message in str(error.value)


@pytest.mark.e2e
def test_bad_data_stops_with_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user": "hi"}\n')
    result = run_main(
        "--mode=train", f"--config.data_path={path}", f"--workdir={tmp_path}/w", timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {path}:1: missing field 'assistant'\n"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(corpus.DataError, match="cannot read it"):
        corpus.load_corpus(str(tmp_path / "nope.jsonl"), 1)
