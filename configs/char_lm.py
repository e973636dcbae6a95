"""Character-level language modelling on any text, for time to quality: the nanoGPT
speedrun's recipe (modded-nanogpt) at nanoGPT's CPU shape.

    python main.py --mode=train --config=configs/char_lm.py --config.data_path=any.txt

The shape is nanoGPT's README recipe for tiny shakespeare on a CPU (4 pre-norm blocks of
width 128, 4 heads, block 64, no biases, tied embeddings), so `../shared/peers/
compare_nanogpt.sh` compares like with like; the training is the modern recipe, each part
measured in `python -m benchmarks.ablation`: rotary positions, QK-norm, a ReLU² MLP,
output projections initialised to zero, logits soft-capped at 15, Muon for the hidden
matrices (3 Newton-Schulz iterations: on a 2-core CPU the orthogonalisation costs as much
as the model's own step at 5) with AdamW for the rest, and a warm-up/stable/decay
schedule. It reaches nanoGPT's 2,000-step loss in a few hundred steps of 24 windows
(docs/char_lm.md has the figures).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data_path = "examples/tiny_text.txt"

    config.n_layers = 4
    config.n_heads = 4
    config.d_model = 128
    config.mlp = True
    config.pre_norm = True
    config.dropout = 0.0
    config.init = "gpt2"
    config.tie_embeddings = True
    config.bias = False
    config.block_size = 64
    config.max_len = 64

    config.position = "rope"
    config.qk_norm = True
    config.mlp_activation = "relu2"
    config.zero_init_outputs = True
    config.logit_softcap = 15.0

    # Muon wants more windows per update than nanoGPT's 12: 24 reach a lower loss in the
    # same seconds (300 steps: 1.803 against 1.820 for 500 steps of 12, tiny shakespeare).
    config.batch_size = 24
    # One XLA device: its matmuls, and Muon's, already use both cores.
    config.cpu_devices = 1
    config.optimizer = "muon"
    config.muon_ns_steps = 3
    config.lr = 6e-3
    config.lr_schedule = "wsd"
    config.decay_fraction = 0.5
    config.min_lr = 1e-4
    config.warmup_steps = 30
    config.weight_decay = 0.1
    config.weight_decay_on = "matrices"
    config.adam_b2 = 0.99

    config.epochs = 2
    # Epoch 1 validates on 25 fixed batches, epoch 2 (the last) on the whole split, the
    # figure the comparison reads.
    config.eval_steps = 25
    config.steps_per_epoch = 150
    config.early_stop_patience = 2
    config.checkpoint_every = 2
    config.max_new_tokens = 500
    config.temperature = 0.8
    config.top_k = 200
    return config
