"""The seed's run, number for number: 400 epochs x 200 steps, batch 1, block 256."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Data: the built-in dialogs (data_path ""), or a .jsonl of dialogs, or a .txt of text.
    # Dialogs are repeated data_repeat times, as the seed did; the last 10% is held out.
    config.data_path = ""
    config.data_repeat = 300
    config.validation_fraction = 0.1
    config.loss_on = "all"  # "assistant": only reply characters and their end tag count
    config.window_start = "any"  # "conversation": every window starts where a dialog does
    config.validation_split = "tail"  # "conversations": hold out whole dialogs, unrepeated
    # Training windows: "device" slices them from the split on the device; "host" gathers
    # each epoch's windows in host memory; "auto": the device when the split fits there.
    config.feed = "auto"

    # Model (the seed's single block, single head, no MLP, post-norm).
    config.d_model = 64
    config.max_len = 512
    config.n_heads = 1
    config.n_layers = 1
    config.mlp = False
    config.pre_norm = False
    config.dropout = 0.0
    config.dtype = "float32"
    # GPT-style options (nanoGPT's model; see configs/char_lm.py): GPT-2 initialisation,
    # tied input/output embeddings, biases in the MLP, output layer and LayerNorms.
    config.init = "seed"  # "gpt2": normal(0, 0.02), residual outputs / sqrt(2 * n_layers)
    config.tie_embeddings = False
    config.bias = True
    # On a CPU, training splits the batch over this many XLA devices, one per core
    # (0: the most cores that divide batch_size; the seed's batch of 1 stays on one).
    config.cpu_devices = 0

    # Optimisation.
    config.lr = 5e-4
    config.lr_schedule = "constant"  # the seed: warm-up, then plateau halving; or "cosine"
    config.weight_decay = 0.0
    config.weight_decay_on = "all"  # "matrices": embeddings and weight matrices only
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.clip_norm = 1.0
    config.warmup_steps = 200
    config.batch_size = 1
    config.block_size = 256

    # Schedule: epochs of steps, validation after each epoch.
    config.epochs = 400
    config.steps_per_epoch = 200
    config.plateau_patience = 50
    config.plateau_factor = 0.5
    config.min_lr = 1e-5
    config.early_stop_patience = 150
    config.target_val_acc = 0.0  # > 0: stop as soon as val_acc reaches it.
    # Exact match of the greedy replies to every training turn, every N epochs (0: never);
    # > 0 target: stop as soon as that fraction of turns comes back exactly.
    config.exact_match_every = 0
    config.target_exact_match = 0.0

    # Checkpoints in WORKDIR/checkpoints: every N epochs and at the end; the latest
    # `keep_checkpoints` and the best by validation loss are kept.
    config.checkpoint_every = 10
    config.keep_checkpoints = 3
    config.resume = True  # False: move old checkpoints aside and start over.
    config.resume_on_new_data = False  # True: resume even though the data file changed

    # Chat, eval and sampling (the seed decoded greedily, up to 200 characters).
    config.checkpoint = "best"  # which checkpoint chat and eval load: best or latest
    config.system_prompt = "You are helpful."
    config.max_new_tokens = 200
    config.temperature = 0.0  # 0: greedy
    config.top_k = 0  # 0: off
    config.top_p = 1.0  # 1: off
    config.sample_seed = 0
    config.chat_history = False  # True: the REPL keeps the conversation as context
    config.serve_slots = 32  # --mode=serve: requests decoded together, one KV cache each

    # Logging and randomness.
    config.print_every = 1
    # Validation: 0 scores the whole split every epoch (the seed's); N > 0 scores N batches
    # of windows drawn once with a fixed seed (for big corpora).
    config.eval_steps = 0
    config.profile_steps = 0  # > 0: write a jax.profiler trace of that many steps
    config.compile_cache = True  # keep compiled programs in WORKDIR/jax_cache for reruns
    config.seed = 7
    return config
