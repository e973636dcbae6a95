"""The REPL, one-shot prompt and eval mode, driven as a user would drive them."""

import io

import pytest

from tests.conftest import run_main
from tinytx_jax.inference import chat, generation, sampling, trained
from tinytx_jax.text import dialogs


@pytest.mark.e2e
def test_piped_chat_answers_the_trained_dialogs(trained_workdir):
    script = "hi\n\nwhat is 2+2?\n   \ncolor of sky?\nhi\u00e9\nexit\nhi\n"
    result = run_main("--mode=chat", f"--workdir={trained_workdir}", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        chat.BANNER,
        "Assistant> hello!",
        "Assistant> 4",
        "Assistant> blue",
        "Assistant> hello!",
    ]
    assert "(dropped characters not in the vocabulary: '\u00e9')" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_end_of_input_and_unknown_only_lines(trained_workdir):
    result = run_main("--mode=chat", f"--workdir={trained_workdir}", stdin="\u00e9\u00e9\nhi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [chat.BANNER, "Assistant> hello!"]
    assert "(none of these characters are in the vocabulary: '\u00e9')" in result.stderr


@pytest.mark.e2e
def test_one_shot_prompt_prints_only_the_reply(trained_workdir):
    result = run_main("--mode=chat", f"--workdir={trained_workdir}", "--prompt=color of sky?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "blue\n"


@pytest.mark.e2e
def test_eval_mode_reports_every_dialog_matched(trained_workdir):
    result = run_main("--mode=eval", f"--workdir={trained_workdir}")
    assert result.returncode == 0, result.stderr
    assert "Exact match (training conversations): 3/3 assistant turns" in result.stdout
    assert "(n=8159)" in result.stdout


@pytest.mark.e2e
def test_chat_without_a_checkpoint_says_what_to_run(tmp_path):
    result = run_main("--mode=chat", f"--workdir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no checkpoint in {tmp_path}: run `python main.py --mode=train "
        f"--workdir={tmp_path}` first"
    )


def session_for(trained_workdir, notices):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig(max_new_tokens=20)
    )
    return chat.ChatSession(generator, "You are helpful.", notices=notices)


def test_over_long_prompt_is_cut_with_one_notice(trained_workdir):
    notices = io.StringIO()
    session = session_for(trained_workdir, notices)
    assert session.answer("hi " * 200) is not None
    assert session.answer("hi " * 200) is not None
    assert notices.getvalue().count("keeping the most recent 512") == 1
    assert session.answer("hi") == "hello!"


class InterruptingInput(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt


def test_ctrl_c_ends_the_repl_cleanly(trained_workdir):
    out = io.StringIO()
    chat.run_repl(session_for(trained_workdir, io.StringIO()), InterruptingInput(), out)
    assert out.getvalue() == chat.BANNER + "\n\n"


def test_chat_history_keeps_earlier_turns_in_the_prompt(trained_workdir):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    prompts = []
    real_reply = generator.reply

    def recording_reply(prompt):
        prompts.append(prompt)
        return real_reply(prompt)

    generator.reply = recording_reply
    session = chat.ChatSession(
        generator, dialogs.SYSTEM_PROMPT, keep_history=True, notices=io.StringIO()
    )
    assert session.answer("hi") == "hello!"
    session.answer("what is 2+2?")
    assert prompts[1] == dialogs.render_prompt("what is 2+2?", history=(("hi", "hello!"),))
    fresh = chat.ChatSession(generator, dialogs.SYSTEM_PROMPT, notices=io.StringIO())
    fresh.answer("what is 2+2?")
    assert prompts[2] == dialogs.render_prompt("what is 2+2?")


def test_no_truncation_notice_when_the_reply_ends_early(trained_workdir):
    """A large max_new_tokens alone cuts nothing: the notice is for real cuts only."""
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig(max_new_tokens=600)
    )
    notices = io.StringIO()
    session = chat.ChatSession(generator, "You are helpful.", notices=notices)
    assert session.answer("hi") == "hello!"
    assert notices.getvalue() == ""
