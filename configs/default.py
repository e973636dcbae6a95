"""The seed's run, number for number: 400 epochs x 200 steps, batch 1, block 256.

Every field has a one-line comment: `python main.py --help` lists them with their values.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Data.
    config.data_path = ""  # "": the built-in dialogs; a .jsonl of dialogs or a .txt of text
    config.data_repeat = 300  # passes of the dialogs in the corpus (plain text: not repeated)
    config.validation_fraction = 0.1  # the held-out part (the seed: the last 10%)
    config.loss_on = "all"  # "all" characters, or only the "assistant" replies and end tags
    config.window_start = "any"  # windows start "any"where, or at a "conversation" start
    config.validation_split = "tail"  # "tail" of the repeated text, or whole "conversations"
    config.feed = "auto"  # training windows from the "device"-resident split, or "host" memory
    config.normalize_user = "unicode,spaces"  # also: case,punctuation,courtesy,known
    config.augment_user = 0.0  # share of user turns retyped in each data repetition after the 1st

    # Model: the seed's single block, single head, no MLP, post-norm.
    config.d_model = 64  # model width
    config.max_len = 512  # learned positions; longer inputs keep their last max_len tokens
    config.n_heads = 1  # attention heads
    config.n_layers = 1  # transformer blocks
    config.mlp = False  # a GELU MLP (4 x d_model) in each block
    config.pre_norm = False  # LayerNorm before attention/MLP (GPT) instead of after (the seed)
    config.dropout = 0.0  # dropout on attention and residual outputs while training
    config.dtype = "float32"  # compute dtype ("bfloat16" for accelerators; params stay float32)
    config.init = "seed"  # "seed": uniform +-0.02; "gpt2": normal(0, 0.02), scaled residuals
    config.tie_embeddings = False  # the output layer shares the token embedding (nanoGPT)
    config.bias = True  # biases in the MLP, output layer and LayerNorms
    # The modern recipe (modded-nanogpt), each off by default:
    config.position = "learned"  # "learned" position table (the seed), or "rope" (rotary)
    config.qk_norm = False  # RMS-normalise queries and keys per head before attention
    config.mlp_activation = "gelu"  # the MLP's nonlinearity: "gelu" or "relu2" (ReLU squared)
    config.zero_init_outputs = False  # attention/MLP output projections start at zero
    config.logit_softcap = 0.0  # > 0: logits = cap * tanh(logits / cap)
    config.cpu_devices = 0  # CPU: XLA devices to split the batch over (0: as the cores allow)

    # Optimisation: clip -> AdamW with warm-up, then plateau halving (or cosine).
    config.lr = 5e-4  # peak learning rate
    config.optimizer = "adamw"  # "adamw", or "muon" for hidden matrices (AdamW for the rest)
    config.muon_ns_steps = 5  # Muon's Newton-Schulz iterations per update (fewer: cheaper)
    config.lr_schedule = "constant"  # "constant" (the seed: plateau halving), "cosine" or "wsd"
    config.decay_fraction = 0.3  # "wsd": the last fraction of the steps, decayed to min_lr
    config.weight_decay = 0.0  # AdamW's decoupled weight decay
    config.weight_decay_on = "all"  # decay "all" parameters, or "matrices" and embeddings only
    config.adam_b1 = 0.9  # AdamW's beta1
    config.adam_b2 = 0.999  # AdamW's beta2 (nanoGPT's character recipe: 0.99)
    config.clip_norm = 1.0  # global gradient-norm clip
    config.warmup_steps = 200  # linear warm-up: lr * (step + 1) / warmup_steps
    config.batch_size = 1  # windows per step
    config.block_size = 256  # window length (0: the longest conversation; dialogs only)

    # Schedule: epochs of steps, validation after each epoch.
    config.epochs = 400  # the budget, in epochs
    config.steps_per_epoch = 200  # steps between validations
    config.plateau_patience = 50  # epochs without a better val loss before the rate halves
    config.plateau_factor = 0.5  # what a plateau multiplies the rate by
    config.min_lr = 1e-5  # the rate never goes below this (cosine decays to it)
    config.early_stop_patience = 150  # epochs without a better val loss before stopping
    config.target_val_acc = 0.0  # > 0: stop once val_acc reaches it (and every other target)
    config.exact_match_every = 0  # every N epochs, score the greedy reply to every turn (0: off)
    config.target_exact_match = 0.0  # > 0: stop once this fraction of replies is exact
    config.target_typed_match = 0.0  # > 0: ... and this fraction of questions asked as typed

    # Checkpoints in WORKDIR/checkpoints.
    config.checkpoint_every = 10  # epochs between checkpoints (one is always saved at the end)
    config.keep_checkpoints = 3  # latest checkpoints kept, besides the best one
    config.resume = True  # resume from the latest checkpoint; False moves old runs aside
    config.resume_on_new_data = False  # True: resume even though the data file changed
    config.init_from = ""  # a trained run's workdir: start from its config.checkpoint params

    # Chat, eval, sampling and serving.
    config.checkpoint = "best"  # which checkpoint chat, eval and serve load: best or latest
    config.system_prompt = "You are helpful."  # the system text of chat prompts
    config.max_new_tokens = 200  # reply (or sample) length limit, in characters
    config.temperature = config_dict.placeholder(float)  # 0: greedy; None: 0 for dialogs, 0.8 text
    config.top_k = config_dict.placeholder(int)  # 0: off; None: off for dialogs, 200 for text
    config.top_p = 1.0  # nucleus sampling mass (1: off)
    config.sample_seed = 0  # the random draws of sampling
    config.chat_history = False  # True: the REPL keeps the conversation as context
    config.serve_slots = 32  # --mode=serve: requests decoded together, one KV cache each
    config.serve_queue = 256  # --mode=serve: requests that may wait for a slot (beyond: 429)
    config.serve_timeout_s = 300.0  # --mode=serve: a request unanswered by then gets a 504

    # Logging, tools and randomness.
    config.print_every = 1  # epochs between log lines
    config.eval_steps = 0  # 0: validate on the whole split; N: on N fixed batches of windows
    config.profile_steps = 0  # > 0: write a jax.profiler trace of that many steps
    config.compile_cache = True  # keep compiled programs in ~/.cache/tinytx_jax/jax_cache
    config.seed = 7  # parameters, window sampling and dropout all derive from it

    # Populations: many members trained in one process (docs/populations.md).
    config.seeds = 1  # > 1: train members with seeds seed, seed + 1, ... together
    config.sweep = ""  # per-member values in one program, e.g. "lr=1e-3,3e-3;weight_decay=0,0.1"
    config.groups = ""  # values that change shapes, one group after another: "d_model=32,64"
    config.member = -1  # chat, eval, serve...: which member of a population (-1: the best)
    config.member_batching = "auto"  # a device's members: "map" (one by one), "vmap", or auto
    return config
