"""Normalising and matching untrusted text: the same results as the earlier patterns, in
time linear in the text's length, whatever the text."""

import random
import re
import time

import pytest

from tinytx_jax.text import known_questions, user_text
from tinytx_jax.text.known_questions import KnownTurns, edits_inside

ALL_STEPS = user_text.parse_steps("unicode,spaces,case,punctuation,courtesy,known")

# The patterns of the previous release: backtracking, so slow on some texts, but right on
# short ones. The linear ones must agree with them.
BACKTRACKING_MARKS = re.compile(r"[?!.,;:\u00bf\u00a1]+(?=\s|$)|(?:(?<=\s)|^)[\u00bf\u00a1]+")
BACKTRACKING_START = re.compile(
    rf"^(?:(?:{user_text._any_of(user_text.COURTESY_BEFORE)})[\s,!.:;]+)+", re.IGNORECASE
)
BACKTRACKING_END = re.compile(
    rf"(?:[\s,]+(?:{user_text._any_of(user_text.COURTESY_AFTER)})[\s!.]*)+$", re.IGNORECASE
)
PIECES = (
    "x",
    "Y",
    " ",
    ",",
    "!",
    ".",
    "?",
    ":",
    ";",
    "\u00bf",
    "\u00a1",
    "thanks",
    "Thank you",
    "ty",
    "please",
    "hi",
    "hi there",
    "so",
    ":)",
    "\n",
    "\u00a0",
    "\u2003",
    "excuse me",
    "ok",
    "cheers",
    "there",
    "\u212a",
)


def edits_by_table(known: str, typed: str) -> int:
    """The edit table cell by cell: the definition `edits_inside` computes by bits."""
    previous, before_previous = [0] * (len(typed) + 1), []
    for i in range(1, len(known) + 1):
        row = [i] + [0] * len(typed)
        for j in range(1, len(typed) + 1):
            row[j] = min(
                previous[j - 1] + (known[i - 1] != typed[j - 1]), previous[j] + 1, row[j - 1] + 1
            )
            if i > 1 and j > 1 and known[i - 1] == typed[j - 2] and known[i - 2] == typed[j - 1]:
                row[j] = min(row[j], before_previous[j - 2] + 1)
        before_previous, previous = previous, row
    return min(previous)


def test_marks_and_courtesy_words_go_as_the_backtracking_patterns_said():
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9)))
        assert user_text._SENTENCE_MARKS.sub("", text) == BACKTRACKING_MARKS.sub("", text), text
        expected = BACKTRACKING_END.sub("", BACKTRACKING_START.sub("", text))
        assert user_text._strip_courtesy(text) == expected, text


def test_the_bit_vector_edit_count_equals_the_edit_table():
    rng = random.Random(0)
    for _ in range(5_000):
        known = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 9)))
        typed = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 12)))
        assert edits_inside(known, typed) == edits_by_table(known, typed), (known, typed)
    assert edits_inside("a" * 200 + "b", "a" * 300) == 1  # over one machine word of rows


def random_text(rng: random.Random, length: int) -> str:
    """Any Unicode, long runs of one mark or word, courtesy words: what backtracks."""
    kinds = [
        lambda n: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(n)),
        lambda n: rng.choice(",.?!\u00bf ") * n,
        lambda n: (rng.choice([" ,thanks", "hi ", "please, ", "\u200b"]) * n)[:n],
        lambda n: "".join(rng.choice(PIECES) for _ in range(n // 4)),
    ]
    parts, left = [], length
    while left > 0:
        size = min(left, rng.randint(1, length))
        parts.append(rng.choice(kinds)(size)[:size])
        left -= size
    return "".join(parts) + rng.choice(["x", "?", " thanks", ""])


def seconds_for(text: str, known: KnownTurns) -> float:
    """The best of three: a busy machine slows some calls, rarely all alike."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        user_text.normalize(text, ALL_STEPS, known)
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("seed", range(4))
def test_normalising_and_matching_any_text_takes_time_linear_in_its_length(seed):
    rng = random.Random(seed)
    known = KnownTurns(random_text(rng, rng.choice([20, 600, 1500])) for _ in range(50))
    for length in (1_000, 100_000, 1_000_000):
        text = random_text(rng, length)
        assert seconds_for(text, known) < 1.0 * max(length / 1e6, 0.1), (seed, length)


@pytest.mark.parametrize(
    "text",
    [
        "x" + " ,thanks" * 34,
        "x" + " ,thanks" * 34 + "x",
        "," * 100_000,
        "," * 100_000 + "x",
        "hi " * 333_333,
    ],
    ids=["thanks", "thanks-then-x", "commas", "commas-then-x", "1MB-of-hi"],
)
def test_the_texts_that_hung_normalisation_take_a_moment(text):
    known = KnownTurns(["what is 2+2?", "what does os.path.join do?", "hi"])
    assert seconds_for(text, known) < 1.0


def test_a_long_message_near_a_long_known_turn_is_matched_within_the_bound():
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(220)]
    long_turn = " ".join(words)[:1500]
    known = KnownTurns([long_turn, *(" ".join(rng.sample(words, 200))[:1500] for _ in range(20))])
    typo = long_turn[:700] + long_turn[701:]  # one letter dropped
    message = "before " * 200 + typo + " after" * 230  # 4,4xx characters around it
    assert 4_000 < len(message) < 5_000
    start = time.perf_counter()
    assert known.match(message) == long_turn
    assert time.perf_counter() - start < 2.0


def test_turns_too_long_to_match_with_typos_are_matched_only_as_typed():
    huge = "a b " * (known_questions.LONGEST_WITH_TYPOS // 2)
    known = KnownTurns([huge, "what is 2+2?"])
    assert known.match(huge) == huge
    assert known.match("x" + huge) == "x" + huge  # one edit away, but past the bound
    assert known.match("so what is 2+2") == "what is 2+2?"
