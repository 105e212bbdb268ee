"""CLIP's byte-level BPE tokenizer files, written for ``transformers.CLIPTokenizer``.

Two vocabularies use this one writer: the full one of every Stable Diffusion model (49408 tokens,
from the merges that OpenAI's CLIP and open_clip ship, ``vocab/bpe_simple_vocab_16e6.txt.gz``,
MIT), and the small ones of the tiny test models (``textinv.testing.write_clip_tokenizer``).
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
FULL_VOCAB_SIZE = 49408  # 512 byte tokens, 48894 merges, BOS and EOS
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_tokens() -> list[str]:
    """The first 512 tokens of every CLIP vocabulary: each byte, then each byte ending a word."""
    chars = list(bytes_to_unicode().values())
    return chars + [c + "</w>" for c in chars]


def full_merges() -> list[str]:
    """CLIP's 48894 merges (``"i n"``, ``"t h"``, ...), in rank order."""
    source = resources.files("textinv") / "vocab" / BPE_FILE
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    return lines[1 : FULL_VOCAB_SIZE - 512 - 2 + 1]  # line 0 is a version header


def write_full_clip_tokenizer(folder: Path, pad_token: str = EOS) -> None:
    """Write the tokenizer of SD 1.x (``pad_token`` EOS) or of SD 2.x and SDXL's second encoder
    (``pad_token="!"``): token ids as in ``openai/clip-vit-large-patch14``."""
    merges = full_merges()
    tokens = byte_tokens() + ["".join(merge.split()) for merge in merges] + [BOS, EOS]
    write_tokenizer(folder, {token: i for i, token in enumerate(tokens)}, merges, pad_token)


def write_tokenizer(
    folder: Path, vocab: dict[str, int], merges: list[str], pad_token: str = EOS
) -> None:
    """``vocab.json``, ``merges.txt`` and the configs of a ``CLIPTokenizer`` (77 tokens, lower
    case, unknown words as EOS), as SD's tokenizer folders hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        **special,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
