"""A text model's sample (nanoGPT's sample.py): a prompt and its free-running
continuation."""

from __future__ import annotations

from collections.abc import Callable

from tinytx_jax import configuration
from tinytx_jax.inference import chat, generation, trained
from tinytx_jax.text.vocabulary import Vocabulary


def default_prompt(vocab: Vocabulary) -> str:
    """A new line where the text has them; else its first character."""
    return "\n" if "\n" in vocab.chars else vocab.chars[0]


def sample(
    model: trained.TrainedModel,
    use: configuration.UseConfig,
    prompt: str | None,
    notice: Callable[[str], None],
) -> str | None:
    """`prompt` and its free-running continuation of max_new_tokens characters; None when
    the prompt has no character of the vocabulary (`notice` hears of those dropped)."""
    if prompt is None:
        prompt = default_prompt(model.vocab)
    unknown = model.vocab.unknown_chars(prompt)
    if unknown:
        notice(f"(dropped characters not in the vocabulary: {chat.quoted(unknown)})")
    tokens = model.vocab.encode(prompt)
    if not len(tokens):
        return None
    generator = generation.Generator(
        model.model,
        model.params,
        model.vocab,
        chat.sampling_config(use, model.plain_text),
        stop_texts=(),
    )
    continuation, _ = generator.generate_tokens(tokens)
    return model.vocab.decode(tokens) + model.vocab.decode(continuation)
