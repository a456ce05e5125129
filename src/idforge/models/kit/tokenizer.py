"""A small, working CLIP byte-level BPE tokenizer, generated rather than downloaded.

Layout as the published CLIP tokenizers: ids 0-255 are the byte symbols, 256-511 the same symbols with the
end-of-word marker `</w>`, then one id per merge (in merge order), then `<|startoftext|>` and `<|endoftext|>`
(the highest ids, as in CLIP, so the text encoders' "argmax of ids" pooling finds the end token).
Merges are learned deterministically from a short built-in list of prompt words.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from .common import write_json

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
NUM_MERGES = 1000  # enough to merge every corpus word into one token

# Words the merges are learned from: common prompt vocabulary. Order and repeats set the merge order.
CORPUS = """
a an the of and with in on at by for to from photo photograph portrait picture image painting drawing
woman man person people girl boy child face faces smiling smile eyes hair beard glasses hat wearing
close up closeup closeup shot cinematic lighting light soft studio natural sunlight dramatic film grain
high quality best quality detailed highly detailed sharp focus realistic photorealistic hyperrealistic
masterpiece professional color colorful black white red blue green yellow orange purple pink brown gray
background blurry blur bokeh street city forest beach mountain sky night day sunset indoor outdoor
standing sitting looking camera front view side profile full body upper half head shoulders
astronaut knight warrior princess wizard robot cyberpunk fantasy anime cartoon watercolor oil sketch
low worst bad ugly deformed distorted disfigured lowres text watermark signature cropped jpeg artifacts
nsfw extra fingers hands arms legs duplicate mutated poorly drawn out of frame
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character; printable Latin-1 bytes map to themselves (GPT-2/CLIP scheme)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    # Printable bytes first, then the remapped ones: the id order of the published vocab.
    return {b: mapping[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


def _word_symbols(word: str, byte_map: dict[int, str]) -> tuple[str, ...]:
    chars = [byte_map[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + END_OF_WORD)


def learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair), deterministic."""
    byte_map = bytes_to_unicode()
    counts = Counter(_word_symbols(w.lower(), byte_map) for w in words)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in counts.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, str]] = Counter()
        for symbols, freq in counts.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        counts = merged
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP-ordered vocabulary for `merges`."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


@lru_cache(maxsize=1)
def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = learn_merges(CORPUS, NUM_MERGES)
    return build_vocab(merges), merges


def vocab_size() -> int:
    """Number of ids; the kit's text encoders use it as `vocab_size`."""
    return len(tiny_vocab()[0])


def special_ids() -> dict[str, int]:
    vocab, _ = tiny_vocab()
    return {"bos": vocab[BOS], "eos": vocab[EOS], "pad_bang": vocab["!"]}


def write_tokenizer(folder: Path, pad_token: str = EOS) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (CLIPTokenizer layout).

    SDXL's tokenizer pads with the end token, its tokenizer_2 with "!": pass `pad_token="!"` for the latter.
    """
    vocab, merges = tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    write_json(folder / "special_tokens_map.json", special)
    write_json(
        folder / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": MODEL_MAX_LENGTH,
            "tokenizer_class": "CLIPTokenizer",
        },
    )
