"""The token cache: a rerun reads the encoding back instead of the file, and notices changes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tinytx_jax.data import corpus, token_cache
from tinytx_jax.text import dialogs, vocabulary


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(token_cache.ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_distinct_chars_are_the_sorted_set_of_the_text():
    text = "héllo wörld 😀\n\tzabc" * 3
    assert token_cache.distinct_chars(text) == "".join(sorted(set(text)))
    assert token_cache.distinct_chars("") == ""


def test_a_rerun_reads_the_tokens_back_and_a_changed_file_is_encoded_again(tmp_path, cache_dir):
    path = tmp_path / "text.txt"
    text = "to be or not to be, that is the question 😀\n" * 50
    path.write_text(text, encoding="utf-8")
    first = corpus.load_corpus(str(path), 1)
    again = corpus.load_corpus(str(path), 1)
    assert (first.from_cache, again.from_cache) == (False, True)
    vocab = vocabulary.Vocabulary.from_text(text)
    assert again.encoded.chars == vocab.chars
    assert np.array_equal(again.encoded.tokens, vocab.encode(text))
    assert again.encoded.tokens.dtype == np.uint16 and again.length == len(text)
    assert again.fingerprint == first.fingerprint == dialogs.corpus_fingerprint(text)
    path.write_text(text + "more", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # even with a clock that did not move, the size differs
    changed = corpus.load_corpus(str(path), 1)
    assert not changed.from_cache and changed.length == len(text) + 4
    assert changed.fingerprint == dialogs.corpus_fingerprint(text + "more")


def test_an_unusable_cache_only_costs_time(tmp_path, cache_dir, monkeypatch):
    path = tmp_path / "text.txt"
    path.write_text("abc abc abc\n" * 20, encoding="utf-8")
    corpus.load_corpus(str(path), 1)
    token_cache.cache_file(path).write_bytes(b"not an npz")  # damaged entry: read again
    assert not corpus.load_corpus(str(path), 1).from_cache
    cache_dir.parent.joinpath("blocker").write_text("")
    monkeypatch.setenv(token_cache.ENVIRONMENT_VARIABLE, str(cache_dir.parent / "blocker"))
    loaded = corpus.load_corpus(str(path), 1)  # cannot write under a file: still loads
    assert not loaded.from_cache and loaded.length == 240


def test_a_text_of_more_than_65535_distinct_characters_is_one_clear_error(tmp_path, cache_dir):
    path = tmp_path / "wide.txt"
    path.write_text("".join(map(chr, range(0x10000, 0x10000 + 70_000))), encoding="utf-8")
    with pytest.raises(corpus.DataError, match="70,000 distinct characters"):
        corpus.load_corpus(str(path), 1)
