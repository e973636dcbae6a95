"""Typed questions: one normalisation everywhere, retyped training turns, the typed metric."""

import dataclasses
import io
import json

import numpy as np
import pytest

from configs import default
from tests.conftest import chat_request
from tinytx_jax import configuration
from tinytx_jax.data import corpus, typed_variants, windows
from tinytx_jax.inference import chat, evaluation, generation, trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring import exact_match
from tinytx_jax.serving import service
from tinytx_jax.text import dialogs, known_questions, user_text
from tinytx_jax.training import init_from, train
from tinytx_jax.training.task import build_task

FULL = user_text.parse_steps("unicode,spaces,case,punctuation")
MESSY = "  What\u2019s   os.path.join  DO?? "


def write_dialogs(path, pairs):
    path.write_text("".join(json.dumps({"user": u, "assistant": a}) + "\n" for u, a in pairs))
    return str(path)


def test_normalisation_folds_what_users_vary_and_keeps_names():
    assert user_text.normalize(MESSY, FULL) == "what's os.path.join do"
    assert user_text.normalize("please, what is 2+2? thanks", FULL) == "please what is 2+2 thanks"
    assert user_text.normalize("?", FULL) == "?"  # nothing but a mark: kept, not emptied
    assert user_text.normalize(MESSY, ()) == MESSY
    for text in (MESSY, "e.g. x", "\u00bfqu\u00e9?", "a\u200bb  c"):
        once = user_text.normalize(text, FULL)
        assert user_text.normalize(once, FULL) == once


def test_courtesy_words_go_unless_they_are_the_whole_question():
    steps = user_text.parse_steps("spaces,case,punctuation,courtesy")
    assert user_text.normalize("Hey there, please what is 2+2? thank you!", steps) == "what is 2+2"
    assert user_text.normalize("what does so do?", steps) == "what does so do"
    assert (
        user_text.normalize("hi", steps) == "hi"
        and user_text.normalize("thanks!", steps) == "thanks"
    )


def test_unknown_steps_are_named():
    with pytest.raises(user_text.NormalizationError, match="unknown step 'lowercase'"):
        user_text.parse_steps("unicode,lowercase")


def test_training_text_holds_exactly_the_prompt_chat_renders(tmp_path):
    """The data file's messy question and the same question typed in chat reach the model
    as one string: the chat prompt is a prefix of the rendered training conversation."""
    path = write_dialogs(tmp_path / "d.jsonl", [(MESSY, "Join paths."), ("hi", "hello!")])
    typing = corpus.UserTyping(FULL)
    loaded = corpus.load_corpus(path, 2, typing)
    vocab = trained.Vocabulary.from_text(loaded.text)
    session = chat.ChatSession(
        generation.Generator(None, None, vocab, chat.DIALOG_SAMPLING),
        dialogs.SYSTEM_PROMPT,
        normalize=typing.normalize,
        notices=io.StringIO(),
    )
    prompts = []
    session.reply_in_context = lambda user, system, history: prompts.append(user) or ""
    session.answer("what\u2019s os.path.join do")
    assert loaded.text.startswith(dialogs.render_prompt(prompts[0]) + "Join paths.")
    assert loaded.conversations[0].turns[0][0] == prompts[0] == "what's os.path.join do"


def test_default_normalisation_leaves_the_seeds_corpus_byte_identical():

    run = RunConfig.from_flat(default.get_config())
    typing = corpus.UserTyping.of(run.data, run.train.seed)
    assert typing.steps == ("unicode", "spaces")
    seed = corpus.load_corpus("", 300, typing)
    assert seed.text == dialogs.builtin_corpus()
    assert seed.fingerprint == corpus.load_corpus("", 300).fingerprint


def test_retyping_changes_user_turns_only_and_is_reproducible(tmp_path):
    pairs = [(f"what does module.name{i} do?", f"Answer number {i}.") for i in range(30)]
    path = write_dialogs(tmp_path / "d.jsonl", pairs)
    plain = corpus.load_corpus(path, 4, corpus.UserTyping(FULL))
    retyped = corpus.load_corpus(path, 4, corpus.UserTyping(FULL, 1.0, seed=3))
    again = corpus.load_corpus(path, 4, corpus.UserTyping(FULL, 1.0, seed=3))
    other = corpus.load_corpus(path, 4, corpus.UserTyping(FULL, 1.0, seed=4))
    assert retyped.text == again.text and retyped.text != other.text != plain.text
    # The first pass is as written; the replies and their weights are the same in every pass.
    once = len(plain.text) // 4
    assert retyped.text[:once] == plain.text[:once]

    def replies(loaded):
        return "".join(c for c, m in zip(loaded.text, loaded.reply_mask, strict=True) if m)

    assert replies(retyped) == replies(plain)
    assert retyped.reply_mask.sum() == plain.reply_mask.sum()
    starts = retyped.starts
    users = [retyped.text[s:].split("<user>")[1].split("</user>")[0] for s in starts]
    changed = [u != p for u, p in zip(users[30:], users[:30] * 3, strict=True)]
    assert len(users) == 120 and sum(changed) > 60
    assert all(user_text.normalize(u, FULL) == u for u in users)  # retyped, then normalised


def test_each_named_variant_types_what_it_says():
    rng = np.random.default_rng(0)
    v = typed_variants.VARIANTS
    question = "what does urllib.parse.urlencode do?"
    assert v["no_final_punctuation"](question, rng) == "what does urllib.parse.urlencode do"
    assert v["please_prefix"](question, rng) == "please, " + question
    assert v["double_space"](question, rng) == "what  does urllib.parse.urlencode do?"
    swapped = v["swapped_letters"](question, rng)
    assert swapped != question and sorted(swapped) == sorted(question)
    assert swapped.split()[:2] == ["what", "does"]  # the longest word took the swap
    assert len(v["dropped_letter"](question, rng)) == len(question) - 1


def test_the_typed_metric_scores_each_turn_as_documented(trained_workdir):
    """Variants that normalisation folds away score exactly as the questions themselves;
    the mixed check asks each turn once, in one drawn variant, normalised."""
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    generator = generation.Generator(model.model, model.params, model.vocab, chat.DIALOG_SAMPLING)
    session = chat.ChatSession(
        generator, dialogs.SYSTEM_PROMPT, normalize=model.normalize_user, notices=io.StringIO()
    )
    report = evaluation.evaluate_checkpoint(model, session, log=lambda _: None)
    assert set(report.typed) == set(typed_variants.VARIANTS)
    # The fast model normalises spaces (the default): a doubled space is no change at all.
    assert report.typed["double_space"] == (report.train.matches, report.train.turns)
    conversations = corpus.load_corpus("", 1).conversations
    mixed = typed_variants.variant_conversations(
        conversations, "mixed", typed_variants.CHECK_SEED, model.normalize_user
    )
    for typed, clean in zip(mixed, conversations, strict=True):
        user = typed.turns[0][0]
        assert user == model.normalize_user(user) and typed.turns[0][1] == clean.turns[0][1]
    batch = exact_match.turn_batch(mixed, model.vocab, model.model.config.max_len, 200)
    check = exact_match.make_turn_check(model.model, batch.num_turns)
    verdicts = np.asarray(check(model.params, *windows.grouped_rows(batch.arrays)))
    replies = [session.answer(c.turns[0][0]) == c.turns[0][1] for c in mixed]
    assert (verdicts & batch.possible_K).tolist() == replies


def test_the_server_normalises_as_the_repl(trained_workdir):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    settings = service.ServeSettings(None, None, dialogs.SYSTEM_PROMPT)
    chat_service = service.ChatService(model, None, settings, "fast")
    request = chat_request("  what  is 2+2?", (("hi ", "hello!"),))
    tokens, _ = chat_service.prompt(request)
    expected = dialogs.render_prompt("what is 2+2?", history=(("hi", "hello!"),))
    assert model.vocab.decode(tokens) == expected


def test_chat_eval_and_the_server_match_typed_turns_to_the_known_ones(trained_workdir):
    """A checkpoint whose run had the `known` step (its meta lists the training turns):
    the REPL, the server and eval all see a typo'd turn as the known one; eval also says
    what the model makes of the typed text alone."""
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    turns = known_questions.user_turns(corpus.load_corpus("", 1).conversations)
    config = {**model.meta["config"], "normalize_user": "unicode,spaces,known"}
    matching = dataclasses.replace(
        model, meta={**model.meta, "config": config, "known_turns": turns}
    )
    assert model.normalize_user("waht is 2+2?") == "waht is 2+2?"
    assert matching.normalize_user("waht is 2+2?") == "what is 2+2?"
    assert matching.normalize_user("waht is 2+2?", match_known=False) == "waht is 2+2?"
    generator = generation.Generator(model.model, model.params, model.vocab, chat.DIALOG_SAMPLING)
    session = chat.ChatSession(
        generator, dialogs.SYSTEM_PROMPT, normalize=matching.normalize_user, notices=io.StringIO()
    )
    assert session.answer("so, colour of sky?") == "blue"
    settings = service.ServeSettings(None, None, dialogs.SYSTEM_PROMPT)
    request = chat_request("waht is 2+2?")
    tokens, _ = service.ChatService(matching, None, settings, "fast").prompt(request)
    assert model.vocab.decode(tokens) == dialogs.render_prompt("what is 2+2?")
    report = evaluation.evaluate_checkpoint(matching, session, log=lambda _: None)
    assert report.typed["swapped_letters"][0] >= 2  # both questions of 8 characters or more
    for variant, (matches, turns) in report.typed.items():
        assert report.typed_model_alone[variant][1] == turns
        assert matches >= report.typed_model_alone[variant][0]


def test_init_from_grows_the_vocabulary_and_keeps_the_trained_rows(tmp_path, text_run):
    source_dir, config = text_run
    data = write_dialogs(tmp_path / "d.jsonl", [("what does \u20ac do?", "Pays.")] * 4)
    tune = config.copy_and_resolve_references()
    tune.data_path, tune.init_from, tune.resume = data, str(source_dir), False
    task = build_task(RunConfig.from_flat(tune))
    source = task.init_source
    assert set(source.vocab.chars) < set(task.vocab.chars) and "\u20ac" in task.vocab.chars
    fresh = task.initial_state(tune.seed).params
    params = init_from.initial_params(source, fresh, task.vocab)
    loaded = trained.load_trained(source_dir, log=lambda _: None).params
    for c in task.vocab.chars:
        new = task.vocab.chars.index(c)
        if c in source.vocab.chars:
            old = source.vocab.chars.index(c)
            np.testing.assert_array_equal(params["token_embed"][new], loaded["token_embed"][old])
            np.testing.assert_array_equal(
                params["head"]["kernel"][:, new], loaded["head"]["kernel"][:, old]
            )
        else:
            np.testing.assert_array_equal(params["token_embed"][new], fresh["token_embed"][new])
    block = ("block_0", "attention", "query", "kernel")
    np.testing.assert_array_equal(
        params[block[0]][block[1]][block[2]][block[3]],
        loaded[block[0]][block[1]][block[2]][block[3]],
    )
    lines = []
    train.train_and_evaluate(tune, str(tmp_path / "tuned"), log=lines.append)
    assert any(ln.startswith(f"Starting from the parameters of {source_dir}") for ln in lines)
    tuned = trained.load_trained(tmp_path / "tuned", "latest", log=lambda _: None)
    assert tuned.vocab.chars == task.vocab.chars


def test_init_from_refuses_another_shape_in_one_line(tmp_path, text_run):
    source_dir, config = text_run
    tune = config.copy_and_resolve_references()
    tune.init_from, tune.d_model, tune.n_heads = str(source_dir), 32, 2
    with pytest.raises(configuration.ConfigError) as error:
        build_task(RunConfig.from_flat(tune))
    message = str(error.value)
    assert "d_model=64 there, 32 here" in message and "n_heads=1 there, 2 here" in message
    assert "\n" not in message
    tune.init_from = str(tmp_path / "nowhere")
    with pytest.raises(configuration.ConfigError, match="is not a directory"):
        build_task(RunConfig.from_flat(tune))


def test_a_run_on_retyped_turns_resumes_on_the_same_draws(tmp_path, small_config):
    """The retyped corpus comes from the seed alone: a resumed run finds the same data (a
    different draw would be refused as other data)."""
    config = small_config
    config.data_path = "examples/dialogs.jsonl"
    config.augment_user, config.data_repeat = 1.0, 4
    config.normalize_user = "unicode,spaces,case,punctuation,courtesy,known"
    config.window_start, config.loss_on, config.block_size = "conversation", "assistant", 0
    config.epochs, config.steps_per_epoch = 1, 5
    train.train_and_evaluate(config, str(tmp_path), log=lambda _: None)
    config.epochs = 2
    lines = []
    _, history = train.train_and_evaluate(config, str(tmp_path), log=lines.append)
    assert [m.epoch for m in history] == [2]
    assert any(ln.startswith("Resuming from") for ln in lines)
    saved = trained.load_trained(tmp_path, log=lambda _: None)
    run = RunConfig.from_flat(config)
    typing = corpus.UserTyping.of(run.data, run.train.seed)
    written = corpus.load_corpus(config.data_path, 1, typing).conversations
    assert tuple(saved.meta["known_turns"]) == known_questions.user_turns(written)
    assert "what is 2+2" in saved.meta["known_turns"]  # normalised as the step finds them
