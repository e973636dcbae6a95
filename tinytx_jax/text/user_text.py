"""One normalisation of what users type, applied alike to the data file and to every prompt.

A character model memorises strings: a question typed with two spaces, a curly apostrophe
or no final `?` is, to it, a different string. What changes no meaning for a user is folded
away here, before the model sees the text, in training, chat, eval and serving alike. Only
user turns are normalised; system prompts and replies stay as written.

Steps (`config.normalize_user`, comma-separated, "" for none):
  unicode         NFKC, typographic quotes and dashes to ASCII, zero-width characters dropped
  spaces          runs of white space to one space, none at either end
  case            case-folded (lower case)
  punctuation     no `?`, `!`, `.`, `,`, `;`, `:` that ends a word ("do?" -> "do", "os.path"
                  stays): the marks of a sentence, not of a name
  courtesy        no greeting or politeness word before the question ("please", "hi", "hey",
                  "ok", ...) or after it ("thanks", "please", ...), unless it is all there is
  known           a turn within a few typos of a training turn, perhaps with words around
                  it, becomes that turn (known_questions.py); chat, eval and serving only:
                  the data file's turns are the known ones, and turns retyped for training
                  stay as typed, to teach the model what the matching leaves to it
"""

from __future__ import annotations

import re
import unicodedata

from tinytx_jax.text.known_questions import KnownTurns

STEPS = ("unicode", "spaces", "case", "punctuation", "courtesy", "known")

_TYPOGRAPHIC = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u200b": None,
        "\u200c": None,
        "\u200d": None,
        "\u2060": None,
        "\ufeff": None,
    }
)
# Marks that end a word (a whole run, tried once from its first mark), and Spanish opening
# marks that start one.
_SENTENCE_MARKS = re.compile(
    r"(?<![?!.,;:\u00bf\u00a1])[?!.,;:\u00bf\u00a1]++(?=\s|$)|(?:(?<=\s)|^)[\u00bf\u00a1]++"
)

COURTESY_BEFORE = (
    "please",
    "pls",
    "plz",
    "hi",
    "hello",
    "hey",
    "hiya",
    "yo",
    "ok",
    "okay",
    "so",
    "um",
    "uh",
    "well",
    "sorry",
    "excuse me",
    "thanks",
    "dear bot",
    "hey there",
    "hi there",
    "hello there",
)
COURTESY_AFTER = ("please", "pls", "plz", "thanks", "thank you", "thx", "ty", "cheers", ":)")


def _any_of(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # longest first


# Courtesy words, each with what separates it from the question. Untrusted text meets no
# pattern that can backtrack over it: every run and repeat here and above is possessive
# (`++`, `*+`), so the time is linear in the text's length, whatever the text.
_COURTESY_START = re.compile(rf"(?:(?:{_any_of(COURTESY_BEFORE)})[\s,!.:;]++)++", re.IGNORECASE)
# The same at the end, on the text read backwards: end marks, a word (reversed), then what
# separates it from the question.
_COURTESY_END_REVERSED = re.compile(
    rf"(?:[\s!.]*+(?:{_any_of(tuple(w[::-1] for w in COURTESY_AFTER))})[\s,]++)++",
    re.IGNORECASE,
)


def _strip_courtesy(text: str) -> str:
    """Drop courtesy words (each followed by a separator) from the start, then those
    (each preceded by a space or comma, perhaps followed by `!`, `.`) from the end."""
    start = _COURTESY_START.match(text)
    text = text[start.end() :] if start else text
    end = _COURTESY_END_REVERSED.match(text[::-1])
    return text[: len(text) - end.end()] if end else text


class NormalizationError(ValueError):
    """An unknown step name in the config."""


def parse_steps(spec: str) -> tuple[str, ...]:
    """The steps named by `spec` ("a,b"), in their fixed order; unknown names are refused."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEPS]
    if unknown:
        raise NormalizationError(
            f"config.normalize_user: unknown step {unknown[0]!r}: choose from {', '.join(STEPS)} "
            '(comma-separated, or "" for none)'
        )
    return tuple(step for step in STEPS if step in names)


def normalize(text: str, steps: tuple[str, ...], known: KnownTurns | None = None) -> str:
    """`text` as the model sees it after `steps` (from `parse_steps`); `known` holds the
    training turns for the `known` step (none: the step leaves the text as it is)."""
    if "unicode" in steps:
        text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC)
    if "spaces" in steps:
        text = " ".join(text.split())
    if "case" in steps:
        text = text.casefold()
    if "punctuation" in steps:
        stripped = _SENTENCE_MARKS.sub("", text)
        text = stripped.strip() if stripped.strip() else text  # a lone "?" stays a question
        if "spaces" in steps:
            text = " ".join(text.split())
    if "courtesy" in steps:
        stripped = _strip_courtesy(text).strip()
        text = stripped if stripped else text  # "hi" alone is the question
    if "known" in steps and known is not None:
        text = known.match(text)
    return text
