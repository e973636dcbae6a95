"""configs/char_lm.py's recipe at nanoGPT's GPU shape for tiny shakespeare (its README:
"about 3 minutes on one A100 ... best validation loss 1.4697"): 6 blocks of width 384 with
6 heads, block 256, batch 64, dropout 0.2, beta2 0.99, with the modern recipe of
char_lm.py (rotary positions, QK-norm, ReLU², zero-initialised outputs, soft-cap, Muon with
its full 5 Newton-Schulz iterations, which cost little on an accelerator, warm-up/stable/
decay) over 2,000 steps instead of 5,000. Unmeasured: no GPU has been lent to this project.

    python main.py --mode=train --config=configs/char_lm_gpu.py --config.data_path=any.txt
"""

import ml_collections

from configs import char_lm


def get_config() -> ml_collections.ConfigDict:
    config = char_lm.get_config()
    config.n_layers = 6
    config.n_heads = 6
    config.d_model = 384
    config.dropout = 0.2
    config.block_size = 256
    config.max_len = 256
    config.batch_size = 64
    config.cpu_devices = 0
    config.dtype = "bfloat16"
    config.muon_ns_steps = 5
    config.lr = 3e-3
    config.warmup_steps = 100
    config.epochs = 8
    config.steps_per_epoch = 250
    config.early_stop_patience = 8
    config.checkpoint_every = 4
    return config
