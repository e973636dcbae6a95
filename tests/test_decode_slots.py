"""The serving engine: concurrent replies equal the REPL's, seeds, cancelling, long contexts."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from tinytx_jax.inference import trained
from tinytx_jax.inference.decode_requests import Request
from tinytx_jax.inference.decode_slots import DecodeSlots
from tinytx_jax.inference.generation import Generator
from tinytx_jax.inference.sampling import SamplingConfig, held_back, stop_prefixes
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.text import dialogs, vocabulary

QUESTIONS = ("hi", "what is 2+2?", "what color is the sky?", "hello", "hi there")


class Reply:
    """Collects what the engine emits for one request."""

    def __init__(self):
        self.pieces: list[str] = []
        self.finish: str | None = None
        self.done = threading.Event()

    def __call__(self, piece: str, finish: str | None) -> None:
        self.pieces.append(piece)
        if finish:
            self.finish = finish
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def submit(engine, prompt, max_new_tokens=200, **sampling) -> tuple[Request, Reply]:
    reply = Reply()
    request = Request(np.asarray(prompt), max_new_tokens, reply, **sampling)
    engine.submit(request)
    return request, reply


@pytest.fixture(scope="module")
def model(trained_workdir):
    return trained.load_trained(trained_workdir, log=lambda _: None)


@pytest.fixture(scope="module")
def engine(model):
    engine = DecodeSlots(model.model, model.params, model.vocab, slots=8)
    yield engine
    engine.close()


def test_replies_decoded_together_equal_the_repl_replies(model, engine):
    generator = Generator(model.model, model.params, model.vocab, SamplingConfig())
    prompts = [dialogs.render_prompt(q) for q in QUESTIONS * 4]  # 20 requests, 8 slots
    expected = [generator.reply(p)[0] for p in prompts]
    submitted = [submit(engine, model.vocab.encode(p)) for p in prompts]
    for (request, reply), want in zip(submitted, expected, strict=True):
        assert reply.done.wait(60)
        assert (reply.text, reply.finish) == (want, "stop")
        # The reply, then the tag that stopped it, counted but never streamed. Which tag an
        # untrained question ("hi there") ends on depends on the CPU's rounding.
        tag = request.completion_tokens - len(want)
        assert 1 <= tag <= max(len(t) for t in engine.stop_texts)
        if "<" not in want:  # (an untrained question may get a garbled tag, held back a while)
            assert "<" not in "".join(reply.pieces)  # a tag is never streamed, even in part
            assert len(reply.pieces) == len(want) + 1  # one piece per character, then the end
    assert expected[:3] == ["hello!", "4", "blue"]
    for (request, _), want in zip(submitted[:3], expected[:3], strict=True):
        assert request.completion_tokens == len(want) + len(dialogs.ASSISTANT_END)  # trained
    assert engine.in_flight == 0


def test_a_seeded_reply_does_not_depend_on_other_requests(model, engine):
    prompt = model.vocab.encode(dialogs.render_prompt("hi"))
    sampling = {"temperature": 1.5, "top_p": 0.95, "seed": 1234}
    _, alone = submit(engine, prompt, 40, **sampling)
    assert alone.done.wait(60)
    crowd = [submit(engine, prompt, 40, temperature=1.5, seed=s) for s in range(6)]
    _, again = submit(engine, prompt, 40, **sampling)
    assert again.done.wait(60) and all(r.done.wait(60) for _, r in crowd)
    assert again.text == alone.text
    assert len({r.text for _, r in crowd}) > 1  # other seeds sample other replies


def test_a_cancelled_request_frees_its_slot(model, engine):
    prompt = model.vocab.encode(dialogs.render_prompt("hi"))
    request, reply = submit(engine, prompt, 4000, temperature=2.0, seed=3)
    freed = []
    engine.on_freed = freed.append
    try:
        engine.cancel(request)
        _, other = submit(engine, prompt)
        assert other.done.wait(60) and other.text == "hello!"
    finally:
        engine.on_freed = None
    assert not reply.done.is_set()
    assert engine.in_flight == 0 and len(freed) == 1
    # Freed at the start of the next round: at most one round (one decode step) later.
    assert engine.most_rounds_to_free <= 1


@pytest.mark.parametrize("programs", ["each_compiled_when_asked", "only_the_ready_two"])
def test_any_prompt_length_and_setting_gives_the_repls_reply(programs):
    """A property over random prompt lengths (within and beyond max_len), temperatures,
    top-p and seeds: the engine's reply is the REPL generator's, token for token; also
    when it has only the two programs a cold server starts with (every prompt padded to
    max_len and prefilled alone, every step over all slots)."""
    config = ModelConfig(vocab_size=11, d_model=16, max_len=64)
    model = TinyTransformer(config)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    vocab = vocabulary.Vocabulary("abcdefghijk")
    engine = DecodeSlots(model, params, vocab, slots=4, stop_texts=())
    if programs == "only_the_ready_two":
        assert engine.programs.compile_ready() == 2
    rng = np.random.default_rng(0)
    try:
        cases = []
        for _ in range(12):
            prompt = rng.integers(0, 11, rng.integers(1, 150))
            temperature = float(rng.choice([0.0, 0.7, 1.3]))
            top_p, seed = float(rng.choice([0.0, 0.5, 1.0])), int(rng.integers(0, 1000))
            cfg = SamplingConfig(temperature, 0, top_p, seed, max_new_tokens=40)
            want, _ = Generator(model, params, vocab, cfg, stop_texts=()).generate_tokens(prompt)
            sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
            cases.append((submit(engine, prompt, 40, **sampling)[1], vocab.decode(want)))
        for reply, want in cases:
            assert reply.done.wait(60) and reply.text == want
        if programs == "only_the_ready_two":
            assert engine.programs.compiled_count == 2 and engine.programs.compiled_late == 0
    finally:
        engine.close()


def test_contexts_longer_than_max_len_go_on_after_a_shift():
    config = ModelConfig(vocab_size=11, d_model=16, max_len=32)
    model = TinyTransformer(config)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    engine = DecodeSlots(
        model, params, vocabulary.Vocabulary("abcdefghijk"), slots=2, stop_texts=()
    )
    try:
        long_prompt, short_prompt = np.arange(50) % 11, np.arange(5)
        long_request, long_reply = submit(engine, long_prompt, 10, temperature=1.0)
        request, reply = submit(engine, short_prompt, 100, temperature=1.0)
        assert long_reply.done.wait(60) and reply.done.wait(60)
        assert (long_reply.finish, reply.finish) == ("length", "length")
        assert (long_request.completion_tokens, request.completion_tokens) == (10, 100)
        assert len(reply.text) == 100 and long_request.context_shifted and request.context_shifted
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("text", "held"),
    [("hello!", 0), ("hello!<", 1), ("hello!</assis", 7), ("a<b", 0), ("x<eo", 3), ("<", 1)],
)
def test_only_what_could_become_a_tag_is_held_back(text, held):
    assert held_back(text, stop_prefixes(dialogs.TAGS)) == held


def test_a_request_that_does_not_stream_gets_its_reply_in_one_piece(model, engine):
    _, reply = submit(engine, model.vocab.encode(dialogs.render_prompt("hi")), stream=False)
    assert reply.done.wait(60)
    assert reply.pieces == ["hello!"] and reply.finish == "stop"


def test_a_requests_own_stop_texts_end_its_reply_before_them(model, engine):
    prompt = model.vocab.encode(dialogs.render_prompt("hi"))
    _, reply = submit(engine, prompt, stop=("lo",))
    assert reply.done.wait(60) and (reply.text, reply.finish) == ("hel", "stop")


def test_a_lone_request_steps_in_its_bucket_and_every_bucket_covers_its_slots():
    config = ModelConfig(vocab_size=11, d_model=16, max_len=32)
    model = TinyTransformer(config)
    params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    engine = DecodeSlots(
        model, params, vocabulary.Vocabulary("abcdefghijk"), slots=8, stop_texts=(), warm_up=True
    )
    programs = engine.programs
    assert programs.wait_compiled(300)  # in the background: then each step is timed
    assert programs.step_buckets() == [1, 2, 4, 8]
    assert all(programs.step_bucket(n) >= n for n in range(1, 9))
    sizes, step = [], programs.step
    programs.step = lambda *inputs: sizes.append(len(inputs[0])) or step(*inputs)
    try:
        _, reply = submit(engine, np.arange(5), 10)
        assert reply.done.wait(60) and len(reply.text) == 10
        # The step for one busy slot: the fastest measured bucket that covers it.
        assert set(sizes) == {programs.step_bucket(1)} and programs.compiled_late == 0
    finally:
        engine.close()


def test_logprobs_come_with_each_character_of_the_reply(model, engine):
    prompt = model.vocab.encode(dialogs.render_prompt("hi"))
    request, reply = submit(engine, prompt, top_logprobs=3)
    assert reply.done.wait(60) and reply.text == "hello!"
    entries = request.logprobs[: len(reply.text)]
    assert "".join(e["token"] for e in entries) == "hello!"
    for entry in entries:  # greedy: the chosen token is the most likely one
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        # (equal up to rounding: XLA may compute the two reads of log_softmax apart)
        assert abs(entry["top_logprobs"][0]["logprob"] - entry["logprob"]) < 1e-5
        assert entry["logprob"] < 1e-5
        assert sum(np.exp(t["logprob"]) for t in entry["top_logprobs"]) <= 1.0 + 1e-4
        assert entry["bytes"] == list(entry["token"].encode())
