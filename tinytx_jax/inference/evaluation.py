"""`--mode=eval`: a checkpoint's validation figures and its replies to the dialogs.

The split is rebuilt exactly as training built it, so the figures are the ones the run
logged; exact match is reported for the training conversations and, with
`validation_split=conversations`, separately for the held-out ones. Then every training
question is asked again as typed in each of `typed_variants.VARIANTS` (normalised as chat
normalises), scored by the batched greedy check of exact_match.py; with the `known`
normalisation step, also without it: what the model alone makes of the typed text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

from tinytx_jax.data import corpus, split, typed_variants, windows
from tinytx_jax.inference.chat import ChatSession
from tinytx_jax.inference.trained import TrainedModel
from tinytx_jax.scoring import exact_match
from tinytx_jax.scoring.loss import make_evaluate
from tinytx_jax.text import dialogs

Miss = tuple[str, str, str]  # (user, got, expected)


@dataclasses.dataclass(frozen=True)
class TurnScore:
    """Greedy replies to every assistant turn of some conversations."""

    matches: int
    misses: list[Miss]

    @property
    def turns(self) -> int:
        return self.matches + len(self.misses)


@dataclasses.dataclass(frozen=True)
class EvalReport:
    val_loss: float
    val_acc: float
    val_targets: int
    train: TurnScore
    heldout: TurnScore | None  # None unless whole conversations were held out
    typed: dict[str, tuple[int, int]]  # variant -> (exact replies, turns)
    typed_model_alone: dict[str, tuple[int, int]]  # the same without the `known` step


def score_turns(session: ChatSession, conversations: tuple[dialogs.Conversation, ...]) -> TurnScore:
    """Ask every assistant turn after the turns before it, as chat with history would."""
    matches, misses = 0, []
    for conversation in conversations:
        for i, (user, expected) in enumerate(conversation.turns):
            got = session.reply_in_context(user, conversation.system, conversation.turns[:i])
            if got == expected:
                matches += 1
            else:
                misses.append((user, got, expected))
    return TurnScore(matches, misses)


def evaluate_checkpoint(
    trained: TrainedModel, session: ChatSession | None, log: Callable[[str], None] = print
) -> EvalReport:
    """Validation loss/accuracy exactly as training reports them, then greedy exact match
    of the replies (a dialog model's; a model of plain text, `session` None, has none)."""
    data, train = trained.run.data, trained.run.train
    typing = corpus.UserTyping.of(data, train.seed)
    text = corpus.load_corpus(data.data_path, data.data_repeat, typing)
    if text.fingerprint != trained.meta["data"]["fingerprint"]:
        log("(the data differs from the checkpoint's training data: figures are not comparable)")
    parts = split.split_corpus(
        text, trained.vocab, data.validation_split, data.validation_fraction, data.data_repeat
    )
    inputs, targets, mask = parts.validation_chunks(
        data.block_size, data.loss_on == "assistant", aligned=data.window_start == "conversation"
    )
    grouped = windows.grouped_rows((inputs, targets, mask))
    loss, acc = make_evaluate(trained.model)(trained.params, *grouped)
    if session is None or not parts.train_conversations:
        report = EvalReport(
            float(loss), float(acc), int(mask.sum()), TurnScore(0, []), None, {}, {}
        )
    else:
        report = score_replies(trained, session, parts, float(loss), float(acc), int(mask.sum()))
    log(
        f"Checkpoint epoch {trained.epoch}: val_loss={report.val_loss:.4f} "
        f"val_acc={report.val_acc:.3f} (n={report.val_targets})"
    )
    sides = [("training", report.train), ("held-out", report.heldout)]
    for side, score in sides:
        if score is None or not score.turns:
            continue
        log(
            f"Exact match ({side} conversations): {score.matches}/{score.turns} assistant "
            f"turns ({score.matches / score.turns:.1%})"
        )
        for user, got, expected in score.misses:
            log(f"  miss: {user!r} -> {got!r} (expected {expected!r})")
    for variant, (matches, turns) in report.typed.items():
        alone, _ = report.typed_model_alone[variant]
        unmatched = f"; without matching known turns {alone}/{turns} ({alone / turns:.1%})"
        log(
            f"Typed as {variant}: {matches}/{turns} exact ({matches / turns:.1%})"
            + (unmatched if trained.known_turns.turns else "")
        )
    return report


def score_replies(
    trained: TrainedModel,
    session: ChatSession,
    parts: split.Split,
    loss: float,
    acc: float,
    targets: int,
) -> EvalReport:
    """The report of a dialog model: the validation figures, then its replies scored."""
    typed = score_typed(trained, parts.train_conversations, trained.normalize_user)
    if trained.known_turns.turns:
        alone = partial(trained.normalize_user, match_known=False)
        typed_model_alone = score_typed(trained, parts.train_conversations, alone)
    else:
        typed_model_alone = typed
    heldout = parts.heldout_conversations
    return EvalReport(
        loss,
        acc,
        targets,
        score_turns(session, parts.train_conversations),
        score_turns(session, heldout) if heldout else None,  # held out: not the tail split
        typed,
        typed_model_alone,
    )


def score_typed(
    trained: TrainedModel,
    conversations: tuple[dialogs.Conversation, ...],
    normalize: Callable[[str], str],
) -> dict[str, tuple[int, int]]:
    """Exact replies per typed variant of every training question, `normalize`d."""
    scores, check = {}, None
    for variant in typed_variants.VARIANTS:
        typed = typed_variants.variant_conversations(
            conversations, variant, typed_variants.CHECK_SEED, normalize
        )
        batch = exact_match.turn_batch(
            typed, trained.vocab, trained.model.config.max_len, trained.run.use.max_new_tokens
        )
        check = check or exact_match.make_turn_check(trained.model, batch.num_turns)
        arrays = windows.grouped_rows(batch.arrays)
        correct = check(trained.params, *arrays)
        scores[variant] = (exact_match.count_matches(correct, batch), batch.num_turns)
    return scores
