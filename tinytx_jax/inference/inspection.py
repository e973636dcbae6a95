"""What the model does with a text, from its own forward pass: the attention of every head,
the next-character odds, the loss of every character, and (past one block) the logit lens.

The numbers come from one `apply` of the trained model with the `intermediates` collection
mutable: the attention weights its heads sow and, per earlier block, the logits its
residual stream would give. Nothing here recomputes the model.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from tinytx_jax.inference.trained import TrainedModel
from tinytx_jax.model.transformer import TinyTransformer

TOP = 5  # next-character odds shown per position
WORST = 10  # characters listed as the hardest of a text


@dataclasses.dataclass(frozen=True)
class Capture:
    """One forward pass over `tokens` (at most max_len of them)."""

    tokens: np.ndarray
    logits_TxV: np.ndarray
    attention_LxHxTxT: np.ndarray  # per block and head: rows sum to 1, zero above the diagonal
    lens_KxTxV: np.ndarray  # blocks before the last: the logits their residual gives (K=L-1)


@dataclasses.dataclass(frozen=True)
class View:
    """What the page and the pictures show: the characters, from which one the model's
    own predictions start being shown (`first`), and per shown position the attention,
    the top odds, the loss of the character that came, and the logit lens."""

    kind: str  # "reply" (a dialogs model's answer) or "text" (a text model's loss)
    chars: list[str]
    first: int  # the first character whose prediction is shown (the reply's, or 1)
    attention: list  # [L][H][position - first][keys]: the query that predicted it
    top: list  # [position - first] -> [(char, probability)] * TOP
    loss: list  # [position - first]: -log p(the character that came)
    lens: list  # [K][position - first]: the earlier blocks' top character
    cut: int  # characters cut from the front to fit max_len
    layers: int
    heads: int

    @property
    def worst(self) -> list[tuple[int, str, float]]:
        """The hardest characters: (position, character, loss), highest loss first."""
        order = np.argsort(-np.asarray(self.loss))[:WORST]
        return [(self.first + int(i), self.chars[self.first + int(i)], self.loss[i]) for i in order]

    def as_json(self) -> dict:
        """The view as the page's script and `/v1/inspect` read it."""
        return {**dataclasses.asdict(self), "worst": self.worst}


@functools.partial(jax.jit, static_argnums=0)
def _apply_capturing(model: TinyTransformer, params, tokens: jax.Array):
    """The model's forward with `intermediates` mutable: compiled once per model and length."""
    return model.apply({"params": params}, tokens, mutable=["intermediates"])


def capture(model: TrainedModel, text: str) -> tuple[Capture, int]:
    """The forward pass over `text`'s last max_len characters (and how many were cut)."""
    tokens = model.vocab.encode(text)
    max_len = model.model.config.max_len
    cut = max(0, len(tokens) - max_len)
    tokens = tokens[cut:]
    logits_TxV, state = _apply_capturing(model.model, model.params, tokens)
    found = state["intermediates"]
    layers = model.model.config.n_layers
    attention = [found[f"block_{i}"]["attention"]["attention"][0][0] for i in range(layers)]
    lens = [found[f"lens_{i}"][0][0] for i in range(layers - 1)]
    return Capture(
        tokens,
        np.asarray(logits_TxV, np.float32),
        np.asarray(attention, np.float32),
        np.asarray(lens, np.float32).reshape(len(lens), len(tokens), model.vocab.size),
    ), cut


def view_of(model: TrainedModel, text: str, first: int, kind: str) -> View:
    """The view of `text` from character `first` on (counted before any cut)."""
    seen, cut = capture(model, text)
    first = max(1, first - cut)
    positions = np.arange(first - 1, len(seen.tokens) - 1)  # the queries that predicted them
    log_probs_TxV = np.asarray(jax.nn.log_softmax(seen.logits_TxV, axis=-1))
    came = seen.tokens[first:]
    top = np.argsort(-log_probs_TxV[positions], axis=-1)[:, :TOP]
    layers, heads = seen.attention_LxHxTxT.shape[:2]
    return View(
        kind=kind,
        chars=[model.vocab.chars[int(t)] for t in seen.tokens],
        first=first,
        attention=[
            [
                [seen.attention_LxHxTxT[i, h, p, : p + 1].tolist() for p in positions]
                for h in range(heads)
            ]
            for i in range(layers)
        ]
        if kind == "reply"
        else [],  # a text's every row would make the page megabytes: its loss is the view
        top=[
            [(model.vocab.chars[int(i)], float(np.exp(log_probs_TxV[p, i]))) for i in row]
            for p, row in zip(positions, top, strict=True)
        ],
        loss=(-log_probs_TxV[positions, came]).tolist(),
        lens=[
            [model.vocab.chars[int(i)] for i in k[positions].argmax(-1)] for k in seen.lens_KxTxV
        ],
        cut=cut,
        layers=layers,
        heads=heads,
    )


def reply_view(model: TrainedModel, prompt: str, reply: str) -> View:
    """A dialogs model's `reply` after the rendered `prompt` (the reply with the tag that
    ended it, when it was written by the model)."""
    return view_of(model, prompt + reply, len(model.vocab.encode(prompt)), "reply")


def text_view(model: TrainedModel, text: str) -> View:
    """A text model's loss on every character of `text` after the first."""
    return view_of(model, text, 1, "text")
