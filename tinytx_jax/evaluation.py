"""`--mode=eval`: a checkpoint's validation figures and its replies to the training dialogs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tinytx_jax import corpus, data
from tinytx_jax.chat import ChatSession
from tinytx_jax.steps import make_evaluate
from tinytx_jax.trained import TrainedModel


@dataclasses.dataclass(frozen=True)
class EvalReport:
    val_loss: float
    val_acc: float
    val_targets: int
    matches: int
    misses: list[tuple[str, str, str]]  # (user, got, expected)

    @property
    def dialogs(self) -> int:
        return self.matches + len(self.misses)


def evaluate_checkpoint(
    trained: TrainedModel, session: ChatSession, log: Callable[[str], None] = print
) -> EvalReport:
    """Validation loss/accuracy exactly as training reports them, then greedy exact match.

    Every assistant turn of the training dialogs is asked for, after the turns before it.
    """
    config = trained.config
    text = corpus.load_corpus(config.data_path, config.data_repeat)
    if data.corpus_fingerprint(text.text) != trained.meta["data"]["fingerprint"]:
        log("(the data differs from the checkpoint's training data: figures are not comparable)")
    inputs, targets, mask = data.validation_set(
        trained.vocab.encode(text.text),
        text.reply_mask,
        config.validation_fraction,
        config.block_size,
        replies_only=config.loss_on == "assistant",
    )
    loss, acc = make_evaluate(trained.model)(trained.params, inputs, targets, mask)
    matches, misses = 0, []
    for conversation in text.conversations:
        for i, (user, expected) in enumerate(conversation.turns):
            got = session.reply_in_context(user, conversation.system, conversation.turns[:i])
            if got == expected:
                matches += 1
            else:
                misses.append((user, got, expected))
    report = EvalReport(float(loss), float(acc), int(mask.sum()), matches, misses)
    log(
        f"Checkpoint epoch {trained.epoch}: val_loss={report.val_loss:.4f} "
        f"val_acc={report.val_acc:.3f} (n={report.val_targets})"
    )
    if text.conversations:
        log(f"Exact match: {report.matches}/{report.dialogs} assistant turns")
    for user, got, expected in report.misses:
        log(f"  miss: {user!r} -> {got!r} (expected {expected!r})")
    return report
