"""nanoGPT's GPU recipe for tiny shakespeare (its README: "about 3 minutes on one A100 ...
best validation loss 1.4697"): 6 blocks of width 384 with 6 heads, block 256, batch 64,
dropout 0.2, 5,000 steps, lr 1e-3 cosine to 1e-4, beta2 0.99. Unmeasured here: no GPU has
been lent to this project yet.

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
    config.epochs = 20
    config.steps_per_epoch = 250
    config.early_stop_patience = 20
    config.checkpoint_every = 5
    return config
