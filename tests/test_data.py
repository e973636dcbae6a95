"""The built-in corpus, vocabulary and split come out as the seed's numbers."""

import numpy as np

from tinytx_jax.data import split, windows
from tinytx_jax.text import dialogs, vocabulary


def test_corpus_numbers_match_the_seed():
    corpus = dialogs.builtin_corpus()
    assert len(dialogs.builtin_corpus(1)) == 272
    assert len(corpus) == 81_600
    vocab = vocabulary.Vocabulary.from_text(corpus)
    assert vocab.size == 31
    cutoff = split.seed_cutoff(len(vocab.encode(corpus)))
    assert (cutoff, len(corpus) - cutoff) == (73_440, 8_160)


def test_dialog_rendering_is_the_seeds():
    text, mask = dialogs.render_conversations((dialogs.Conversation((("hi", "hello!"),)),))
    assert text == (
        "<system>You are helpful.</system>\n<user>hi</user>\n<assistant>hello!</assistant>\n<eot>\n"
    )
    assert "".join(c for c, m in zip(text, mask, strict=True) if m) == "hello!</assistant>"
    assert text.startswith(dialogs.render_prompt("hi"))


def test_vocabulary_round_trip_and_unknowns():
    vocab = vocabulary.Vocabulary.from_text(dialogs.builtin_corpus(1))
    assert vocab.chars == "".join(sorted(vocab.chars))
    text = "what is 2+2?"
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.unknown_chars("hi ZQZ!") == "ZQ"
    assert vocab.decode(vocab.encode("hZi")) == "hi"


def test_split_keeps_at_least_two_training_tokens():
    assert split.seed_cutoff(2) == 2 and split.seed_cutoff(3) == 2


def test_validation_chunks_cover_every_target_once():
    tokens = np.arange(8_160, dtype=np.int32)
    inputs, targets, mask = windows.validation_chunks(tokens, 256)
    assert inputs.shape == targets.shape == mask.shape == (32, 256)
    assert mask.sum() == 8_159
    real = mask.reshape(-1) == 1
    np.testing.assert_array_equal(inputs.reshape(-1)[real], tokens[:-1])
    np.testing.assert_array_equal(targets.reshape(-1)[real], tokens[1:])
    assert mask[-1].sum() == 8_159 - 31 * 256


def test_sampled_validation_windows_are_fixed_real_windows():
    tokens = np.arange(10_000, dtype=np.int32) % 97
    inputs, targets, mask = windows.sampled_windows(tokens, 24, 16)
    again = windows.sampled_windows(tokens, 24, 16)
    assert all(np.array_equal(a, b) for a, b in zip((inputs, targets, mask), again, strict=True))
    assert inputs.shape == targets.shape == mask.shape == (24, 16) and mask.all()
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])  # consecutive text
    np.testing.assert_array_equal((inputs[:, 1:] - inputs[:, :-1]) % 97, 1)
    small = windows.sampled_windows(tokens[:100], 24, 16)  # a cap beyond the split: all of it
    assert small[2].sum() == 99


def test_encoding_is_a_lookup_that_drops_unknown_characters():
    vocab = vocabulary.Vocabulary.from_text("hello world ü😀")
    assert vocab.decode(vocab.encode("hello 😀 zü")) == "hello 😀 ü"
    assert vocab.encode("xyz").size == 0
