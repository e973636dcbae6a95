"""Your own dialogs: conversation-aligned windows, held-out conversations, exact match."""

import io
import json

import jax
import numpy as np
import pytest

from configs import default
from configs import dialogs as dialogs_config
from tinytx_jax.configuration import ConfigError
from tinytx_jax.data import corpus, split, windows
from tinytx_jax.inference import chat, evaluation, generation, sampling
from tinytx_jax.inference import trained as trained_model
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring import exact_match
from tinytx_jax.text import dialogs, vocabulary
from tinytx_jax.training import metrics, train
from tinytx_jax.training.steps import draw_window_starts
from tinytx_jax.training.task import build_task

EXAMPLES = "examples/dialogs.jsonl"


def quiet(_):
    pass


def test_conversation_offsets_point_at_each_conversation():
    conversations = corpus.load_corpus(EXAMPLES, 1).conversations
    text, _ = dialogs.render_conversations(conversations, 3)
    offsets = dialogs.conversation_offsets(conversations, 3)
    assert len(offsets) == 3 * len(conversations)
    assert all(text.startswith("<system>", int(o)) for o in offsets)
    assert text.count("<system>") == len(offsets)


def test_reply_is_cut_at_the_first_tag():
    assert dialogs.cut_at_tag("hello!</assistant>\n<eot>") == "hello!"
    assert dialogs.cut_at_tag("hi<eot>\n<system>x</system>") == "hi"
    assert dialogs.cut_at_tag("a < b and c>d") == "a < b and c>d"


def test_window_starts_come_from_the_given_starts():
    starts = jax.numpy.asarray([3, 40, 77], jax.numpy.int32)
    drawn = draw_window_starts(jax.random.key(0), 64, 1000, 32, starts)
    assert set(np.asarray(drawn).tolist()) == {3, 40, 77}
    anywhere = draw_window_starts(jax.random.key(0), 64, 1000, 32, None)
    assert int(anywhere.min()) >= 0 and int(anywhere.max()) < 1000 - 32


def test_conversation_windows_train_on_conversation_starts_only(small_config):
    small_config.data_path = EXAMPLES
    small_config.window_start = "conversation"
    small_config.block_size = 64
    task = build_task(RunConfig.from_flat(small_config))
    tokens = np.asarray(task.data.train_tokens)
    system = task.vocab.encode("<system>")
    for start in np.asarray(task.data.train_starts):
        assert np.array_equal(tokens[start : start + len(system)], system)
        assert start + small_config.block_size < len(tokens)
    inputs, _, weights = (np.asarray(a).reshape(-1, a.shape[-1]) for a in task.data.val_chunks)
    rows = inputs[weights.sum(axis=1) > 0]  # validation rows also start at conversations
    assert len(rows) and all(np.array_equal(row[: len(system)], system) for row in rows)


def test_heldout_conversations_are_whole_fixed_and_never_trained(small_config):
    loaded = corpus.load_corpus(EXAMPLES, 5)
    vocab = vocabulary.Vocabulary.from_text(loaded.text)
    parts = split.split_corpus(loaded, vocab, "conversations", 0.25, 5)
    again = split.split_corpus(loaded, vocab, "conversations", 0.25, 5)
    assert parts.heldout_conversations == again.heldout_conversations
    assert len(parts.heldout_conversations) == 2  # round(8 * 0.25)
    assert set(parts.heldout_conversations).isdisjoint(parts.train_conversations)
    assert len(parts.heldout_conversations) + len(parts.train_conversations) == 8
    held_text, _ = dialogs.render_conversations(parts.heldout_conversations)
    assert vocab.decode(parts.val_tokens) == held_text  # once, not repeated
    train_text, _ = dialogs.render_conversations(parts.train_conversations, 5)
    assert vocab.decode(parts.train_tokens) == train_text
    for conversation in parts.heldout_conversations:
        assert dialogs.render_conversations((conversation,))[0] not in train_text


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data_path": "examples/tiny_text.txt", "validation_split": "conversations"}, "dialog"),
        ({"data_path": "examples/tiny_text.txt", "window_start": "conversation"}, "dialog"),
        ({"data_path": "examples/tiny_text.txt", "exact_match_every": 1}, "dialog"),
        ({"window_start": "conversation", "block_size": 500, "data_repeat": 1}, "block_size"),
    ],
)
def test_settings_that_cannot_work_are_named(small_config, overrides, message):
    small_config.update(overrides)
    with pytest.raises(ConfigError, match=message):
        build_task(RunConfig.from_flat(small_config))


def test_one_conversation_cannot_be_split(tmp_path, small_config):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"user": "hi " * 100, "assistant": "yo " * 100}) + "\n")
    small_config.update(data_path=str(path), validation_split="conversations", block_size=32)
    with pytest.raises(ConfigError, match="at least 2 conversations"):
        build_task(RunConfig.from_flat(small_config))


def test_generation_stops_at_any_stop_text():
    from tests.test_sampling import random_model, vocab

    model, params = random_model()
    prompt = np.arange(10, dtype=np.int32)
    cfg = sampling.SamplingConfig(max_new_tokens=30)
    free, _ = generation.Generator(model, params, vocab(), cfg, stop_texts=()).generate_tokens(
        prompt
    )
    stop = vocab().decode(free[6:8])
    never = "zzzzz"  # a text that does not occur stops nothing
    generator = generation.Generator(model, params, vocab(), cfg, stop_texts=(never, stop))
    stopped, _ = generator.generate_tokens(prompt)
    first = vocab().decode(free).find(stop)
    np.testing.assert_array_equal(stopped, free[: first + 2])
    assert generator.reply(vocab().decode(prompt))[0] == vocab().decode(free[:first])


@pytest.fixture(scope="module")
def dialogs_run(tmp_path_factory):
    """configs/dialogs.py on the example dialogs, every third epoch checkpointed."""
    workdir = tmp_path_factory.mktemp("dialogs")
    config = dialogs_config.get_config()
    config.data_path = EXAMPLES
    config.steps_per_epoch = 4  # short epochs: the turns come right one by one
    config.epochs = 40
    config.exact_match_every = 1
    config.target_typed_match = 0.0  # the exact-match target alone
    config.checkpoint_every = 3  # and the last epoch's
    config.keep_checkpoints = 100
    lines = []
    _, history = train.train_and_evaluate(config, str(workdir), log=lines.append)
    return workdir, history, lines


def test_dialogs_recipe_stops_once_every_reply_is_exact(dialogs_run):
    workdir, history, lines = dialogs_run
    assert history[-1].exact_match == 1.0
    assert all(m.exact_match < 1.0 for m in history[:-1])
    assert lines[-3].startswith(f"Target reached at epoch {history[-1].epoch}: exact_match=1.000")
    line = next(ln for ln in lines if ln.startswith(f"Epoch {history[-1].epoch},"))
    assert " exact_match=1.000 typed_match=" in line
    records = metrics.read_metrics(workdir / metrics.METRICS_FILE)
    assert [r["exact_match"] for r in records] == [m.exact_match for m in history]


def test_on_device_exact_match_equals_greedy_chat_replies(dialogs_run):
    """At every epoch (from 0% to 100%), each turn's on-device verdict is what decoding
    that turn through the chat, with its history, gives."""
    workdir, history, _ = dialogs_run
    seen = set()
    model = trained_model.load_trained(workdir, "latest", log=quiet)
    config = model.run
    data = config.data
    conversations = corpus.load_corpus(data.data_path, data.data_repeat).conversations
    batch = exact_match.turn_batch(
        conversations, model.vocab, model.model.config.max_len, config.use.max_new_tokens
    )
    check = exact_match.make_turn_check(model.model, batch.num_turns)
    saved = [m for m in history if (workdir / "checkpoints" / str(m.epoch)).is_dir()]
    for m in saved[:: max(1, len(saved) // 3)] + saved[-1:]:
        store_params = _params_at(workdir, m.epoch, model)
        verdicts = np.asarray(check(store_params, *windows.grouped_rows(batch.arrays)))
        generator = generation.Generator(
            model.model, store_params, model.vocab, chat.sampling_config(config.use)
        )
        session = chat.ChatSession(generator, config.use.system_prompt, notices=io.StringIO())
        replies = [
            session.reply_in_context(user, c.system, c.turns[:i]) == expected
            for c in conversations
            for i, (user, expected) in enumerate(c.turns)
        ]
        assert (verdicts & batch.possible_K).tolist() == replies
        assert exact_match.count_matches(verdicts, batch) / batch.num_turns == m.exact_match
        seen.add(sum(replies))
    assert len(seen) >= 3  # some epochs in between, not only none and all


def _params_at(workdir, epoch, model):
    from tinytx_jax.checkpoints.store import CheckpointStore

    store = CheckpointStore(workdir, read_only=True)
    try:
        return store.restore_params(epoch, trained_model.abstract_params(store.read_meta(epoch)))
    finally:
        store.close()


def test_eval_reports_training_and_heldout_exact_match_apart(tmp_path):
    config = dialogs_config.get_config()
    config.data_path = EXAMPLES
    config.validation_split = "conversations"
    config.validation_fraction = 0.25
    config.steps_per_epoch = 5
    config.epochs = 6
    config.exact_match_every = 1
    config.target_exact_match = 0.0
    config.target_typed_match = 0.0
    lines = []
    _, history = train.train_and_evaluate(config, str(tmp_path), log=lines.append)
    assert all(m.val_exact_match is not None for m in history)
    assert "val_exact_match=" in next(ln for ln in lines if ln.startswith("Epoch 6,"))
    model = trained_model.load_trained(tmp_path, "latest", log=quiet)
    generator = generation.Generator(
        model.model, model.params, model.vocab, chat.sampling_config(model.run.use)
    )
    session = chat.ChatSession(generator, config.system_prompt)
    out = []
    report = evaluation.evaluate_checkpoint(model, session, log=out.append)
    assert report.train.turns + report.heldout.turns == 10
    assert report.heldout.turns == sum(
        len(c.turns)
        for c in split.split_corpus(
            corpus.load_corpus(EXAMPLES, 1),
            model.vocab,
            "conversations",
            0.25,
            1,
        ).heldout_conversations
    )
    assert abs(report.val_loss - history[-1].val_loss) < 1e-4
    assert any(ln.startswith("Exact match (held-out conversations)") for ln in out)
    assert any(ln.startswith("Exact match (training conversations)") for ln in out)


def test_default_config_keeps_the_seeds_choices():
    config = default.get_config()
    assert (config.window_start, config.validation_split) == ("any", "tail")
    assert config.exact_match_every == 0 and config.target_exact_match == 0.0


def test_chat_with_history_answers_every_turn_as_eval_asks_it(dialogs_run):
    """The REPL's history and eval's preceding turns give the model the same context."""
    workdir, _, _ = dialogs_run
    model = trained_model.load_trained(workdir, "best", log=quiet)
    config = model.run
    for conversation in corpus.load_corpus(EXAMPLES, 1).conversations:
        generator = generation.Generator(
            model.model, model.params, model.vocab, chat.sampling_config(config.use)
        )
        session = chat.ChatSession(generator, conversation.system, keep_history=True)
        replies = [session.answer(user) for user, _ in conversation.turns]
        assert replies == [expected for _, expected in conversation.turns]


def test_the_fitted_block_size_leaves_the_given_config_alone(small_config):
    small_config.update(data_path=EXAMPLES, window_start="conversation", block_size=0)
    task = build_task(RunConfig.from_flat(small_config))
    assert small_config.block_size == 0 and task.run.data.block_size > 0
