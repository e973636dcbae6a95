"""nanoGPT's CPU recipe and configs/char_lm.py side by side, on the same text and machine.

    python -m benchmarks.compare_nanogpt --nanogpt=PATH --torch_python=PATH [--data=FILE]

--nanogpt: a checkout of github.com/karpathy/nanoGPT (its train.py, model.py,
configurator.py and config/train_shakespeare_char.py are used unchanged). --torch_python:
an interpreter with torch and numpy (a measuring tool, never this project's dependency).
The text is encoded as nanoGPT's data/shakespeare_char/prepare.py does (sorted characters,
first 90% to train); nanoGPT then trains with the CPU recipe its README gives
("--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0"), and this project with configs/char_lm.py. Both losses are over the whole
validation split in block-size chunks (nanoGPT's own estimate samples 20 batches). Prints
each whole-process wall (start to exit), nanoGPT's median ms/iter, both losses and the CPU.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks.machine import cpu_model
from benchmarks.processes import main_py

_NANOGPT = flags.DEFINE_string("nanogpt", None, "A nanoGPT checkout.", required=True)
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "Python with torch.", required=True)
_DATA = flags.DEFINE_string("data", "data/tinyshakespeare.txt", "The text both train on.")
RECIPE = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py")

# Run by --torch_python inside the laid-out directory.
ENCODE = """
import pickle, numpy as np
data = open('data/shakespeare_char/input.txt', encoding='utf-8').read()
chars = sorted(set(data)); stoi = {c: i for i, c in enumerate(chars)}
cut = int(len(data) * 0.9)
for name, part in (('train', data[:cut]), ('val', data[cut:])):
    np.array([stoi[c] for c in part], dtype=np.uint16).tofile(f'data/shakespeare_char/{name}.bin')
meta = {'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi}
pickle.dump(meta, open('data/shakespeare_char/meta.pkl', 'wb'))
"""
WHOLE_SPLIT_LOSS = """
import numpy as np, torch
from model import GPT, GPTConfig
checkpoint = torch.load('out-shakespeare-char/ckpt.pt', map_location='cpu')
model = GPT(GPTConfig(**checkpoint['model_args']))
model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()})
model.eval()
T = checkpoint['model_args']['block_size']
val = np.fromfile('data/shakespeare_char/val.bin', dtype=np.uint16).astype(np.int64)
n = (len(val) - 1) // T
x = torch.from_numpy(val[: n * T].reshape(n, T))
y = torch.from_numpy(val[1 : n * T + 1].reshape(n, T))
total = 0.0
with torch.no_grad():
    for i in range(0, n, 256):
        _, loss = model(x[i : i + 256], y[i : i + 256])
        total += loss.item() * len(x[i : i + 256])
print(f'{total / n:.4f}')
"""


def lay_out(directory: Path) -> None:
    """nanoGPT's files and the encoded text in `directory`."""
    for name in NANOGPT_FILES:
        source = Path(_NANOGPT.value) / name
        if not source.exists():
            sys.exit(f"error: {source} is missing: --nanogpt must be a nanoGPT checkout")
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, directory / name)
    text_dir = directory / "data" / "shakespeare_char"
    text_dir.mkdir(parents=True)
    shutil.copy(_DATA.value, text_dir / "input.txt")
    torch_python(directory, "-c", ENCODE)


def torch_python(directory: Path, *args: str) -> str:
    result = subprocess.run(
        [_TORCH_PYTHON.value, *args], cwd=directory, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(f"error: {_TORCH_PYTHON.value} {args[0]} failed: {result.stderr[-300:]}")
    return result.stdout


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "nanogpt"
        directory.mkdir()
        lay_out(directory)
        start = time.perf_counter()
        log = torch_python(directory, "train.py", "config/train_shakespeare_char.py", *RECIPE)
        nanogpt_s = time.perf_counter() - start
        step_ms = [float(ms) for ms in re.findall(r"^iter \d+: .*time ([\d.]+)ms", log, re.M)]
        # The last line: nanoGPT's model prints its parameter count first.
        nanogpt_loss = torch_python(directory, "-c", WHOLE_SPLIT_LOSS).strip().splitlines()[-1]
        project_s, out = main_py(
            "--mode=train",
            "--config=configs/char_lm.py",
            f"--config.data_path={_DATA.value}",
            f"--workdir={Path(scratch) / 'project'}",
        )
    project_loss = re.findall(r"^Epoch \d+, .*val_loss=([\d.]+)", out, re.M)[-1]
    print(f"CPU: {cpu_model()}")
    print(
        f"nanoGPT : wall {nanogpt_s:.0f} s, median {statistics.median(step_ms):.1f} ms/iter, "
        f"val loss (whole split) {nanogpt_loss}"
    )
    print(f"project : wall {project_s:.0f} s, val loss (whole split) {project_loss}")
    print(f"wall ratio: {nanogpt_s / project_s:.2f}x")


if __name__ == "__main__":
    app.run(main)
