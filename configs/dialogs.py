"""Your own dialogs, learned exactly: train until every reply comes back, then stop.

    python main.py --mode=train --config=configs/dialogs.py --config.data_path=my.jsonl
    python main.py --mode=chat --workdir=./workdir

Chosen on ../shared/data/faq_stdlib.jsonl (300 real Q/A pairs) on a 2-core CPU, one change at
a time against the step budget (README, "Train on your own data"): conversation-aligned
windows and a reply-only loss; one wide block (2 blocks, d_model 256 or 8 heads learned no
faster per second); batch 16 (4 and 8 learned much less per second, even at higher rates).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data_path = "examples/dialogs.jsonl"
    config.data_repeat = 2  # windows start at conversations: repetition adds nothing else
    config.window_start = "conversation"  # as every chat prompt does
    config.loss_on = "assistant"
    config.block_size = 0  # fit the longest conversation

    config.d_model = 128
    config.n_heads = 4
    config.n_layers = 1
    config.mlp = True
    config.pre_norm = True

    config.batch_size = 16
    config.lr = 3e-3
    config.lr_schedule = "cosine"
    config.min_lr = 1e-4
    config.warmup_steps = 100

    # The step budget: 2,000 steps; stop earlier once every training turn is exact.
    config.epochs = 20
    config.steps_per_epoch = 100
    config.exact_match_every = 1
    config.target_exact_match = 1.0
    config.early_stop_patience = 20
    config.checkpoint_every = 5
    return config
