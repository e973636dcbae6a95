"""Typed user turns matched to the turns the model was trained on.

A tiny character model gives back exactly the strings it memorised; a person types one of
them with a letter dropped or swapped, a word before or after, a contraction. The other
normalisation steps fold what changes no meaning; this one, the last (`known` in
`config.normalize_user`), replaces a turn that is within a few edits of a training turn by
that turn, so the model sees the string it learned. A turn near none is left as typed, for
the model to answer as it can.

Close means: the known turn K is found inside the typed text T, as whole words, with at
most `max_edits(K)` letter edits (Damerau: insert, delete, replace, swap neighbours), and T
is at most `2 len(K)` characters longer than K (words around the question, not a longer
question around a short turn). Among the known turns that share the most character
trigrams with T, the one with the fewest edits wins, then the longest; a tie between two is
left to the model.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable

import numpy as np

from tinytx_jax.text import dialogs

SHORTLIST = 6  # known turns, by shared trigrams, whose edit distance is computed
SHORTEST_WITH_TYPOS = 8  # characters: a shorter turn is matched only as typed ("hi", "ho")
CHARACTERS_PER_EDIT = 16  # a typo more for each 16 characters of the known turn
FILLER_CHARACTERS_PER_CHARACTER = 2.0  # T may be up to 2 len(K) characters longer than K
LONGEST_WITH_TYPOS = 4096  # characters: a longer turn is matched only as typed


def max_edits(known: str) -> int:
    """Typos allowed in `known`: one, and one more per 16 characters; none when short."""
    if len(known) < SHORTEST_WITH_TYPOS:
        return 0
    return 1 + len(known) // CHARACTERS_PER_EDIT


def _trigrams(text: str) -> set[str]:
    padded = f" {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def edits_inside(known: str, typed: str) -> int:
    """Fewest edits that turn some substring of `typed` into `known` (free start and end).

    Myers' bit-vector search with Hyyrö's transposition term: one column of the edit table
    per character of `typed`, the column held as bits of two integers, so the cost is
    len(typed) big-integer steps of len(known) bits, not len(typed) x len(known) cells.
    """
    m = len(known)
    if m == 0:
        return 0
    all_rows, last_row = (1 << m) - 1, 1 << (m - 1)
    where: dict[str, int] = {}  # character -> bits of the rows of `known` that hold it
    for row, char in enumerate(known):
        where[char] = where.get(char, 0) | (1 << row)
    plus, minus = all_rows, 0  # vertical differences of +1 and -1 down the column
    diagonal_zero, previous_eq = 0, 0
    score = best = m
    for char in typed:
        eq = where.get(char, 0)
        swapped = ((~diagonal_zero & eq) << 1) & previous_eq  # two neighbours swapped
        x = eq | minus
        diagonal_zero = ((((x & plus) + plus) ^ plus) | x | swapped) & all_rows
        up = minus | (~(diagonal_zero | plus) & all_rows)  # horizontal +1
        down = plus & diagonal_zero  # horizontal -1
        if up & last_row:
            score += 1
        elif down & last_row:
            score -= 1
        up, down = (up << 1) & all_rows, (down << 1) & all_rows  # row 0 is 0: a free start
        plus = down | (~(diagonal_zero | up) & all_rows)
        minus = up & diagonal_zero
        previous_eq = eq
        best = min(best, score)
    return best


def user_turns(conversations: Iterable[dialogs.Conversation]) -> tuple[str, ...]:
    """Every user turn of `conversations`, once each, in order."""
    return tuple(dict.fromkeys(user for c in conversations for user, _ in c.turns))


class KnownTurns:
    """The training turns, indexed by character trigram for `match`."""

    def __init__(self, turns: Iterable[str]):
        self.turns = tuple(dict.fromkeys(turns))  # unique, in first-seen order
        self._as_typed = frozenset(self.turns)
        with_typos = [len(t) for t in self.turns if len(t) <= LONGEST_WITH_TYPOS]
        self._longest_typed = int(
            (1 + FILLER_CHARACTERS_PER_CHARACTER) * max(with_typos, default=0)
        )
        by_gram: dict[str, list[int]] = collections.defaultdict(list)
        for i, turn in enumerate(self.turns):
            for gram in _trigrams(turn):
                by_gram[gram].append(i)
        count = max(len(self.turns), 1)
        self._postings = {gram: np.asarray(ids) for gram, ids in by_gram.items()}
        self._idf = {gram: math.log(1 + count / len(ids)) for gram, ids in by_gram.items()}
        norms = np.zeros(len(self.turns))
        for gram, ids in self._postings.items():
            norms[ids] += self._idf[gram] ** 2
        self._norms = np.sqrt(np.maximum(norms, 1e-12))

    def _shortlist(self, typed: str) -> list[int]:
        scores = np.zeros(len(self.turns))
        for gram in _trigrams(typed):
            if gram in self._postings:
                scores[self._postings[gram]] += self._idf[gram] ** 2
        scores /= self._norms
        order = np.argsort(-scores, kind="stable")[:SHORTLIST]
        return [int(i) for i in order if scores[i] > 0]

    def match(self, typed: str) -> str:
        """The known turn `typed` was meant to be, or `typed` itself when none is close."""
        if typed in self._as_typed or len(typed) > self._longest_typed:
            return typed  # known as typed, or longer than any known turn with words around it
        candidates = []
        for i in self._shortlist(typed):
            known = self.turns[i]
            too_long = len(typed) - len(known) > FILLER_CHARACTERS_PER_CHARACTER * len(known)
            if too_long or len(known) > LONGEST_WITH_TYPOS:
                continue
            edits = edits_inside(f" {known} ", f" {typed} ")  # whole words only
            if edits <= max_edits(known):
                candidates.append(((edits, -len(known)), known))
        candidates.sort()
        if not candidates or (len(candidates) > 1 and candidates[1][0] == candidates[0][0]):
            return typed  # near none, or as near two: the model's to answer
        return candidates[0][1]
