"""Pre-training for fine-tuning: configs/dialogs.py's model, trained on plain text.

    python main.py --mode=train --config=configs/pretrain_text.py \\
        --config.data_path=data/tinyshakespeare.txt --workdir=runs/pretrained
    python main.py --mode=train --config=configs/dialogs.py --config.data_path=my.jsonl \\
        --config.init_from=runs/pretrained --workdir=runs/tuned

The architecture is the dialogs recipe's, so `init_from` can take its parameters; the
training is a character language model's: windows anywhere, every character in the loss.
"""

import ml_collections

from configs import dialogs


def get_config() -> ml_collections.ConfigDict:
    config = dialogs.get_config()
    config.data_path = "examples/tiny_text.txt"
    config.window_start = "any"
    config.loss_on = "all"
    config.block_size = 128
    config.validation_fraction = 0.1
    config.exact_match_every = 0
    config.target_exact_match = 0.0
    config.target_typed_match = 0.0
    config.epochs = 10
    config.steps_per_epoch = 100
    config.eval_steps = 25
    config.checkpoint_every = 10
    config.temperature = 0.8
    config.top_k = 200
    return config
