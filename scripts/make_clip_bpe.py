"""Derive the CLIP tokenizer files (vocab.json, merges.txt) shipped under src/idforge/models/configs/clip-bpe/.

The hub cannot be reached where idforge is built and tested, but the CLIP BPE merge list is public and travels in
PyPI wheels. `open-clip-torch` ships it as `open_clip/bpe_simple_vocab_16e6.txt.gz`. Usage:

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    python scripts/make_clip_bpe.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The vocabulary is built the way CLIP defines it: the 256 byte-level symbols, the same with the end-of-word marker
`</w>`, one token per merge (the first 49152 - 256 - 2 merges of the list), then the two special tokens. That gives
the 49408 ids of every Stable Diffusion CLIP text encoder. merges.txt is the same merge list with the version header
the `tokenizers` BPE format expects.
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
OUT = Path(__file__).resolve().parents[1] / "src" / "idforge" / "models" / "configs" / "clip-bpe"


def byte_symbols() -> list[str]:
    """The 256 stand-ins byte-level BPE uses for raw bytes, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first (in byte order); the other bytes follow, mapped to
    code points from 256 on. The order matters: it fixes the first 512 token ids.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        text = gzip.decompress(z.read(MEMBER)).decode("utf-8")
    merges = [tuple(line.split()) for line in text.split("\n")[1 : N_MERGES + 1]]
    assert all(len(m) == 2 for m in merges), "unexpected merge line"
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408 and len(set(tokens)) == len(tokens)
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (OUT / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
