"""OpenAI's o200k_base and cl100k_base encodings, built with tiktoken from rank files shipped in the package.

Nothing is downloaded and no cache directory is read: relay/data/<name>.tiktoken is the file OpenAI
publishes (one `base64(token bytes) rank` line per token), checked against the sha256 tiktoken itself
expects for it (tiktoken_ext/openai_public.py), and the Encoding is built with the same split pattern and
special tokens as tiktoken's own constructor. Every encoding built is then checked against counts known
from OpenAI's tokenizer: a damaged rank file or a wrong tiktoken is refused with one line
(TokenizerError, a ConfigError: `relay serve` exits with status 2) instead of counting billing tokens wrongly.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from .config_yaml import ConfigError

__all__ = ["CL100K", "KNOWN_COUNTS", "O200K", "SPECS", "Encoder", "TokenizerError", "load", "self_check"]

O200K = "o200k_base"
CL100K = "cl100k_base"

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class Spec:
    sha256: str  # of the .tiktoken file, as in tiktoken's `expected_hash`
    ranks: int  # lines in the file: ranks 0 .. ranks-1
    pat_str: str
    special_tokens: Mapping[str, int]


# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14.0).
SPECS: Mapping[str, Spec] = {
    O200K: Spec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ranks=199_998,
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
    CL100K: Spec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ranks=100_256,
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
            r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276,
        },
    ),
}

# Counts OpenAI's tokenizer gives (o200k_base, cl100k_base). The strings cover what the two split
# patterns treat differently (CJK, contractions, digit runs, whitespace runs, emoji, special-token text),
# so a swapped or damaged encoding fails at least one.
KNOWN_COUNTS: tuple[tuple[str, int, int], ...] = (
    ("hello world", 2, 2),
    ("The quick brown fox jumps over the lazy dog.", 10, 10),
    ("你好，世界！今天天气很好。", 9, 16),
    ("def f(x):\n    return x**2  # square\n", 13, 13),
    ('café "quoted" naïve 🚀', 9, 10),
    ("<|endoftext|>", 7, 7),
    ("They'll say 1234567 isn't   enough\r\n\n", 11, 12),
    ("Привет, мир! مرحبا بالعالم नमस्ते", 12, 24),
)


class Encoder(Protocol):
    """What relay.tokens needs of an encoding (tiktoken.Encoding has it)."""

    name: str

    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenizerError(ConfigError):
    """The tokenizer cannot be trusted to count: relay refuses to start rather than bill on a guess."""


def data_dir() -> Path:
    """Where the installed package keeps its rank files."""
    return Path(str(resources.files("relay") / "data"))


def load(name: str, directory: Path | None = None) -> Encoder:
    """The named encoding built from directory/<name>.tiktoken (the package's own by default), checked."""
    spec = SPECS.get(name)
    if spec is None:
        raise TokenizerError(f"tokenizer: unknown encoding {name!r} (known: {', '.join(SPECS)})")
    path = (directory or data_dir()) / f"{name}.tiktoken"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"tokenizer: cannot read {path} ({e.strerror or e}); reinstall relay") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise TokenizerError(
            f"tokenizer: {path} is not OpenAI's {name} rank file (sha256 {digest}, expected {spec.sha256}); "
            "reinstall relay"
        )
    ranks = _ranks(data, path)
    if len(ranks) != spec.ranks:  # unreachable when the hash matched; a cheap guard on the parser
        raise TokenizerError(f"tokenizer: {path} holds {len(ranks)} ranks, expected {spec.ranks}")
    try:
        import tiktoken
    except ImportError as e:
        raise TokenizerError(f"tokenizer: tiktoken is not installed ({e}); reinstall relay") from None
    enc = tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
    )
    # The Encoding keeps the ranks as a Python dict only to be pickled; the tokenizer proper (in Rust) has
    # its own copy. Dropped, they free 36 MB of the 109 MB the two encodings take.
    enc._mergeable_ranks = {}
    self_check(enc)
    return enc


def _ranks(data: bytes, path: Path) -> dict[bytes, int]:
    """The format tiktoken.load.load_tiktoken_bpe reads (`base64 rank` lines), parsed in one pass.

    Splitting the whole file at once and decoding with binascii takes 0.1 s for o200k_base, a third of
    a per-line loop.
    """
    fields = data.split()
    try:
        if len(fields) % 2:
            raise ValueError("odd field count")
        return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
    except (ValueError, binascii.Error):
        raise TokenizerError(f"tokenizer: {path} is not a .tiktoken rank file") from None


def self_check(enc: Encoder) -> None:
    """Refuse an encoder that does not give OpenAI's counts for KNOWN_COUNTS."""
    column = {O200K: 1, CL100K: 2}.get(enc.name)
    if column is None:
        raise TokenizerError(f"tokenizer: no known counts for encoding {enc.name!r}")
    for row in KNOWN_COUNTS:
        text, expected = row[0], row[column]
        try:
            got: int | str = len(enc.encode_ordinary(text))
        except Exception as e:  # noqa: BLE001 - any failure here means the same: do not count with it
            got = f"{type(e).__name__}: {e}"
        if got != expected:
            raise TokenizerError(
                f"tokenizer: {enc.name} counts {text!r} as {got} tokens, OpenAI's tokenizer as {expected}; "
                "reinstall relay and its tiktoken dependency"
            )
