"""Build a FAQ of Python's standard library from the running Python's own docstrings.

    python data/prepare_faq.py            # writes data/faq_stdlib.jsonl (300 pairs)

Each pair asks what a public function of a common stdlib module does and answers with the
first sentence of its docstring, as `{"user": "what does math.modf do?", "assistant":
"Return the fractional and integer parts of x."}`. The same Python version gives the same
file byte for byte: modules and names are walked in sorted order and the pairs are picked
by a fixed seed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

from script_output import check_writable, fail, write

MODULES = (
    "base64",
    "calendar",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "difflib",
    "enum",
    "fnmatch",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "html",
    "inspect",
    "itertools",
    "json",
    "math",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "platform",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "sys",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "urllib.parse",
    "uuid",
    "zlib",
)
MIN_ANSWER, MAX_ANSWER = 10, 90  # characters: answers a one-block character model can hold
OUT = Path(__file__).resolve().parent / "faq_stdlib.jsonl"


def first_sentence(doc: str) -> str | None:
    """The docstring's first sentence on one line, or None if it has none that fits."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", paragraph)
    if not match:
        return None
    sentence = match.group(1)
    # Signatures ("f(x) -> y"), tags and unprintable text make poor answers.
    if "->" in sentence or "<" in sentence or not sentence.isprintable():
        return None
    return sentence if MIN_ANSWER <= len(sentence) <= MAX_ANSWER else None


def defined_in(obj: object, module_name: str) -> bool:
    """Whether `obj` belongs to this module, not one it imports; exceptions are left out."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return False
    home = getattr(obj, "__module__", None) or module_name
    # C implementations live in private or platform modules (_operator, posix).
    return home == module_name or home.startswith("_") or home in ("posix", "nt")


def stdlib_pairs() -> list[dict[str, str]]:
    """Every (question, first sentence) the listed modules' public callables give."""
    pairs, seen = [], set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if name.startswith("_") or not callable(obj) or not defined_in(obj, module_name):
                continue
            answer = first_sentence(inspect.getdoc(obj) or "")
            question = f"what does {module_name}.{name} do?"
            if answer and question not in seen:
                seen.add(question)
                pairs.append({"user": question, "assistant": answer})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="how many Q/A pairs to keep")
    parser.add_argument("--seed", type=int, default=0, help="which pairs are kept")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON Lines file to write")
    args = parser.parse_args()
    check_writable(args.out)
    if args.pairs < 1:
        fail(f"--pairs={args.pairs}: ask for at least one pair")
    pairs = stdlib_pairs()
    if len(pairs) < args.pairs:
        fail(f"only {len(pairs)} pairs found; ask for --pairs={len(pairs)} or fewer")
    chosen = random.Random(args.seed).sample(pairs, args.pairs)
    write(args.out, "".join(json.dumps(p) + "\n" for p in chosen).encode("utf-8"))
    version = sys.version.split()[0]
    print(f"Wrote {args.out} ({len(chosen)} pairs of {len(pairs)} found, Python {version})")


if __name__ == "__main__":
    main()
