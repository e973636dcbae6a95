"""Fetch tiny shakespeare (Karpathy's char-rnn corpus, 1,115,394 bytes), checked by SHA-256.

    python data/prepare_shakespeare.py                       # download it (needs the internet)
    python data/prepare_shakespeare.py --from=PATH/input.txt # or copy a file you already have

Writes data/tinyshakespeare.txt, as nanoGPT's data/shakespeare_char/prepare.py does; a file
whose checksum differs is refused, so every figure in the docs is measured on the same text.
"""

from __future__ import annotations

import argparse
import hashlib
import urllib.request
from pathlib import Path

from script_output import check_writable, fail, write

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
OUT = Path(__file__).resolve().parent / "tinyshakespeare.txt"


def fetch(source: Path | None) -> bytes:
    """The corpus's bytes, from `source` or from URL; exits with one line if neither works."""
    try:
        if source is not None:
            return source.read_bytes()
        with urllib.request.urlopen(URL, timeout=30) as response:
            return response.read()
    except OSError as error:
        where = source or URL
        fail(f"cannot read {where} ({error}); give a local copy with --from=PATH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="a local copy to use instead")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the text")
    args = parser.parse_args()
    check_writable(args.out)
    raw = fetch(args.source)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        fail(f"checksum {digest} is not tiny shakespeare's {SHA256}: a different file")
    write(args.out, raw)
    print(f"Wrote {args.out} ({len(raw):,} bytes, sha256 verified)")


if __name__ == "__main__":
    main()
