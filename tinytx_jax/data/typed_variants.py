"""How people type a question they know: seeded perturbations of user turns.

Training (`config.augment_user`) shows each repetition of a conversation after the first
with its user turns retyped by `retype`: case, end punctuation, a typo, a filler word
before or after, a contraction. Evaluation asks every training question once per named
`VARIANTS` entry (the ways of typing that issue #18 measured, and more, two of them with
fillers found nowhere in training or normalisation), and the typed
exact-match check of training asks each question in one of them, drawn per question.
Replies and their loss weights are never touched: only user text is retyped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from tinytx_jax.data.typing_words import COMMON_WORDS, CONTRACTIONS, FILLERS_AFTER, FILLERS_BEFORE
from tinytx_jax.text import dialogs, user_text

Retype = Callable[[str, np.random.Generator], str]

END_MARKS = ("", "?", "??", "!", ".", " ?", "?!")
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_WORD = re.compile(r"\S+")


def _words(text: str) -> list[re.Match]:
    return [m for m in _WORD.finditer(text) if sum(c.isalpha() for c in m.group()) >= 2]


def _longest_word(text: str) -> re.Match | None:
    words = _words(text)
    return max(words, key=lambda m: len(m.group())) if words else None


def _letter_positions(word: str) -> list[int]:
    return [i for i, c in enumerate(word) if c.isalpha()]


def _edit_word(text: str, word: re.Match | None, edit: Callable[[str], str]) -> str:
    if word is None:
        return text
    return text[: word.start()] + edit(word.group()) + text[word.end() :]


def swap_letters(word: str, rng: np.random.Generator) -> str:
    """Two neighbouring letters swapped (a pair that differs, when there is one)."""
    pairs = [i for i in range(len(word) - 1) if word[i].isalpha() and word[i + 1].isalpha()]
    pairs = [i for i in pairs if word[i] != word[i + 1]] or pairs
    if not pairs:
        return word
    i = int(rng.choice(pairs))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def drop_letter(word: str, rng: np.random.Generator) -> str:
    letters = _letter_positions(word)
    if len(letters) < 3:
        return word
    i = int(rng.choice(letters[1:]))  # people rarely lose the first letter
    return word[:i] + word[i + 1 :]


def double_letter(word: str, rng: np.random.Generator) -> str:
    letters = _letter_positions(word)
    if not letters:
        return word
    i = int(rng.choice(letters))
    return word[: i + 1] + word[i:]


def near_key(word: str, rng: np.random.Generator) -> str:
    """One letter replaced by a neighbour on its keyboard row."""
    letters = [
        i for i in _letter_positions(word) if any(word[i].lower() in r for r in KEYBOARD_ROWS)
    ]
    if not letters:
        return word
    i = int(rng.choice(letters))
    row = next(r for r in KEYBOARD_ROWS if word[i].lower() in r)
    j = row.index(word[i].lower())
    options = [row[k] for k in (j - 1, j + 1) if 0 <= k < len(row)]
    return word[:i] + str(rng.choice(options)) + word[i + 1 :]


TYPOS = (swap_letters, drop_letter, double_letter, near_key)


def typo(text: str, rng: np.random.Generator) -> str:
    """One typo in one word of at least two letters."""
    words = _words(text)
    if not words:
        return text
    word = words[int(rng.integers(len(words)))]
    edit = TYPOS[int(rng.integers(len(TYPOS)))]
    return _edit_word(text, word, lambda w: edit(w, rng))


def recase(text: str, rng: np.random.Generator) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        return text.lower()
    if kind == 1:
        return text.upper()
    if kind == 2:
        return text[:1].upper() + text[1:]
    return text.title()


def end_mark(text: str, rng: np.random.Generator) -> str:
    return text.rstrip("?!. ") + str(rng.choice(END_MARKS))


def _some_words(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(COMMON_WORDS, size=1 + int(rng.integers(3))))


def filler_before(text: str, rng: np.random.Generator) -> str:
    """A filler phrase, or one to three arbitrary words, before the question."""
    if rng.random() < 0.5:
        return str(rng.choice(FILLERS_BEFORE)) + text
    return _some_words(rng) + str(rng.choice((" ", ", "))) + text


def filler_after(text: str, rng: np.random.Generator) -> str:
    """A filler phrase or arbitrary words, before the final punctuation ("do thanks?") or
    after it ("do? thanks")."""
    filler = str(rng.choice(FILLERS_AFTER)) if rng.random() < 0.5 else " " + _some_words(rng)
    return text + filler if rng.random() < 0.5 else _before_end_mark(text, filler)


def contraction(text: str, rng: np.random.Generator) -> str:
    """One contraction made or undone, where the text has one; else a typo."""
    found = []
    for long, short in CONTRACTIONS:
        for a, b in ((long, short), (short, long)):
            found += [(m, b) for m in re.finditer(rf"\b{re.escape(a)}\b", text, re.IGNORECASE)]
    if not found:
        return typo(text, rng)
    match, replacement = found[int(rng.integers(len(found)))]
    return text[: match.start()] + replacement + text[match.end() :]


def extra_space(text: str, rng: np.random.Generator) -> str:
    spaces = [m.start() for m in re.finditer(" ", text)]
    if not spaces:
        return " " + text
    i = int(rng.choice(spaces))
    return text[:i] + "  " + text[i + 1 :]


PERTURBATIONS: tuple[Retype, ...] = (
    recase,
    end_mark,
    typo,
    filler_before,
    filler_after,
    contraction,
    extra_space,
)
# Typos and fillers change what the model sees most; the rest normalisation may undo.
WEIGHTS = np.asarray((1, 1, 3, 3, 3, 1, 1), float) / 13


def retype(text: str, rng: np.random.Generator) -> str:
    """`text` as a person might type it: one or two perturbations in random order."""
    count = 1 + int(rng.random() < 0.5)
    for index in rng.choice(len(PERTURBATIONS), size=count, replace=False, p=WEIGHTS):
        text = PERTURBATIONS[int(index)](text, rng)
    return text


def _swap_in_longest(text: str, rng: np.random.Generator) -> str:
    return _edit_word(text, _longest_word(text), lambda w: swap_letters(w, rng))


def _drop_in_longest(text: str, rng: np.random.Generator) -> str:
    return _edit_word(text, _longest_word(text), lambda w: drop_letter(w, rng))


def _before_end_mark(text: str, filler: str) -> str:
    stem = text.rstrip("?!. ")
    return stem + filler + text[len(stem) :]


def _double_space_after_first_word(text: str, rng: np.random.Generator) -> str:
    return text.replace(" ", "  ", 1)


VARIANTS: dict[str, Retype] = {
    "lowercase": lambda text, rng: text.lower(),
    "uppercase": lambda text, rng: text.upper(),
    "no_final_punctuation": lambda text, rng: text.rstrip("?!. "),
    "swapped_letters": _swap_in_longest,
    "dropped_letter": _drop_in_longest,
    "please_prefix": lambda text, rng: "please, " + text,
    "thanks_suffix": lambda text, rng: text + " thanks",
    "double_space": _double_space_after_first_word,
    # Fillers that neither training's retyping nor the courtesy normalisation knows:
    "unseen_prefix": lambda text, rng: "one more thing, " + text,
    "unseen_suffix": lambda text, rng: _before_end_mark(text, " if you know"),
}


CHECK_SEED = 0  # the draws of every evaluation of typed questions, whatever the run's seed


def variant_rng(seed: int, *where: int) -> np.random.Generator:
    """The generator of one retyping: the same `seed` and place always draw the same."""
    return np.random.default_rng([seed, *where])


def retyped_passes(
    conversations: tuple[dialogs.Conversation, ...],
    repeat: int,
    rate: float,
    seed: int,
    steps: tuple[str, ...],
) -> tuple[dialogs.Conversation, ...]:
    """`repeat` passes over `conversations` (normalised already): the first as written, in
    the others each user turn retyped with probability `rate`, then normalised by `steps`."""
    passes = list(conversations)
    for k in range(1, repeat):
        for i, conversation in enumerate(conversations):
            rng = variant_rng(seed, k, i)
            users = [retype(u, rng) if rng.random() < rate else u for u in conversation.users]
            normalized = [user_text.normalize(u, steps) for u in users]
            passes.append(conversation.with_users(normalized))
    return tuple(passes)


def variant_conversations(
    conversations: tuple[dialogs.Conversation, ...],
    variant: str,
    seed: int,
    normalize: Callable[[str], str],
) -> tuple[dialogs.Conversation, ...]:
    """Every conversation with every user turn typed as `variant` ("mixed": one variant
    per turn, drawn), then normalised as chat normalises what it is given."""
    names = tuple(VARIANTS)

    def typed(user: str, rng: np.random.Generator) -> str:
        name = names[int(rng.integers(len(names)))] if variant == "mixed" else variant
        return normalize(VARIANTS[name](user, rng))

    out = []
    for i, conversation in enumerate(conversations):
        rng = variant_rng(seed, i)
        typed_users = [typed(user, rng) for user in conversation.users]
        out.append(conversation.with_users(typed_users))
    return tuple(out)
