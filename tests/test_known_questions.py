"""The `known` normalisation step: typed turns matched to the training turns."""

import pytest

from tinytx_jax.text import dialogs, known_questions, user_text
from tinytx_jax.text.known_questions import KnownTurns, edits_inside

FAQ = (
    "what does operator.iand do",
    "what does operator.iadd do",
    "what does os.path.join do",
    "what does os.path do",
    "how do i reverse a list",
    "hi",
)


@pytest.mark.parametrize(
    ("known", "typed", "edits"),
    [
        ("abc", "abc", 0),
        ("abc", "xx abc yy", 0),  # words around it are free
        ("abcd", "abdc", 1),  # two neighbours swapped: one edit
        ("abcd", "abd", 1),
        ("abcd", "abxcd", 1),
        ("abcd", "axcd", 1),
        ("abcd", "badc", 2),
        ("abc", "", 3),
    ],
)
def test_edits_inside_counts_damerau_edits_of_the_best_substring(known, typed, edits):
    assert edits_inside(known, typed) == edits


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("what does operator.inad do", "what does operator.iand do"),  # swapped
        ("what does os.path.jin do", "what does os.path.join do"),  # dropped
        ("what does operator.iaddd do", "what does operator.iadd do"),
        ("what does os.path.jooin do", "what does os.path.join do"),  # doubled
        ("what does os.path.koin do", "what does os.path.join do"),  # neighbouring key
        ("one more thing, what does os.path do", "what does os.path do"),  # before
        ("what does os.path.join do if you know", "what does os.path.join do"),  # after
        ("so how do i reverse a list then", "how do i reverse a list"),
        ("one more thing what does os.path do if you know", "what does os.path do"),
    ],
)
def test_a_turn_typed_with_a_typo_or_words_around_it_is_the_known_turn(typed, meant):
    assert KnownTurns(FAQ).match(typed) == meant


@pytest.mark.parametrize(
    "typed",
    [
        "what does operator.imul do",  # another name, three edits from both
        "what does operator.iadn do",  # one edit from both: the model's to answer
        "what is the capital of france",
        "this",  # holds "hi", but not as a word
        "ho",  # one edit from "hi": short turns allow none
        "how do i reverse a list of strings in java without a loop or a copy please",  # longer
        "what does os.path.join do",  # known already
    ],
)
def test_text_near_no_known_turn_is_left_as_typed(typed):
    assert KnownTurns(FAQ).match(typed) == typed


def test_the_step_is_the_last_and_needs_the_turns():
    steps = user_text.parse_steps("known,case,spaces")
    assert steps == ("spaces", "case", "known")
    known = KnownTurns(FAQ)
    assert user_text.normalize("How do I  REVRESE a list", steps, known) == FAQ[4]
    assert user_text.normalize("How do I  REVRESE a list", steps) == "how do i revrese a list"
    assert KnownTurns(()).match("anything") == "anything"


def test_user_turns_are_listed_once_in_order():
    conversations = (
        dialogs.Conversation((("hi", "hello"), ("what is 2+2?", "4"))),
        dialogs.Conversation((("hi", "hey"),)),
    )
    assert known_questions.user_turns(conversations) == ("hi", "what is 2+2?")
