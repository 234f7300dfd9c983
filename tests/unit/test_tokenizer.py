"""The bundled tokenizer: rank files checked by sha256, encodings checked against known counts, and a broken
encoder refused (tests/e2e/test_tokenizer_start.py: `relay serve` then does not start)."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from relay import tokens
from relay.config_yaml import ConfigError
from relay.tokenizer import (
    CL100K,
    KNOWN_COUNTS,
    O200K,
    SPECS,
    TokenizerError,
    _ranks,
    data_dir,
    load,
    self_check,
)


@pytest.mark.parametrize("name", [O200K, CL100K])
def test_shipped_rank_files_are_openais(name: str) -> None:
    """The hashes tiktoken's own loader expects for OpenAI's published files."""
    data = (data_dir() / f"{name}.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == SPECS[name].sha256
    assert SPECS[O200K].sha256 == "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    assert SPECS[CL100K].sha256 == "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


@pytest.mark.parametrize("name", [O200K, CL100K])
def test_built_as_tiktokens_own_constructor_builds_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same hash, split pattern and special tokens as the installed tiktoken's openai_public (its loader,
    which would download the file, replaced by the shipped copy)."""
    from tiktoken_ext import openai_public

    asked: list[str] = []

    def shipped(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        # the file read as tiktoken's own loader reads it (its loader needs blobfile for local paths before 0.12)
        asked.append(expected_hash or "")
        lines = (data_dir() / url.rsplit("/", 1)[1]).read_bytes().splitlines()
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache written
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", shipped)
    ref = getattr(openai_public, name)()
    assert asked == [SPECS[name].sha256]
    assert ref["pat_str"] == SPECS[name].pat_str
    assert ref["special_tokens"] == dict(SPECS[name].special_tokens)
    assert len(ref["mergeable_ranks"]) == SPECS[name].ranks
    path = data_dir() / f"{name}.tiktoken"
    assert _ranks(path.read_bytes(), path) == ref["mergeable_ranks"]  # the one-pass parser reads it alike


@pytest.mark.parametrize("name", [O200K, CL100K])
def test_a_copy_in_another_directory_loads(name: str, tmp_path: Path) -> None:
    shutil.copy(data_dir() / f"{name}.tiktoken", tmp_path)
    enc = load(name, tmp_path)
    assert enc.name == name
    assert len(enc.encode_ordinary("hello world")) == 2


@pytest.mark.parametrize("name", [O200K, CL100K])
def test_a_corrupted_copy_is_refused(name: str, tmp_path: Path) -> None:
    data = bytearray((data_dir() / f"{name}.tiktoken").read_bytes())
    line = data.index(b"\n", 1000) + 1  # swap the ranks of two tokens: still a well-formed file
    a, rest = data[line:].split(b"\n", 2)[:2]
    first, second = a.split(b" "), rest.split(b" ")
    swapped = first[0] + b" " + second[1] + b"\n" + second[0] + b" " + first[1]
    data[line : line + len(a) + 1 + len(rest)] = swapped
    (tmp_path / f"{name}.tiktoken").write_bytes(bytes(data))
    with pytest.raises(TokenizerError) as err:
        load(name, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert f"is not OpenAI's {name} rank file" in message
    assert SPECS[name].sha256 in message
    assert isinstance(err.value, ConfigError)  # `relay serve` prints it as one line and exits 2


def test_a_truncated_or_missing_file_is_refused(tmp_path: Path) -> None:
    data = (data_dir() / f"{O200K}.tiktoken").read_bytes()
    (tmp_path / f"{O200K}.tiktoken").write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="is not OpenAI's o200k_base rank file"):
        load(O200K, tmp_path)
    with pytest.raises(TokenizerError, match=r"cannot read .*cl100k_base\.tiktoken"):
        load(CL100K, tmp_path)
    with pytest.raises(TokenizerError, match="unknown encoding"):
        load("p50k_base", tmp_path)


@pytest.mark.parametrize(
    ("text", "o200k", "cl100k"),
    [
        *KNOWN_COUNTS,
        ("Hello, world! 1,234,567.89 and a\ttab", 15, 15),
        ("🚀🚀🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ñandú", 31, 34),
    ],
)
def test_known_counts_for_both_encodings(text: str, o200k: int, cl100k: int) -> None:
    """Counts from tiktoken with OpenAI's rank files (the ones checked by hash above)."""
    assert len(load(O200K).encode_ordinary(text)) == o200k
    assert len(load(CL100K).encode_ordinary(text)) == cl100k
    assert tokens.count_text(text, "gpt-4o-mini") == o200k
    assert tokens.count_text(text, "gpt-3.5-turbo") == cl100k


def test_token_ids_are_tiktokens() -> None:
    assert load(O200K).encode_ordinary("hello world") == [24912, 2375]
    assert load(CL100K).encode_ordinary("hello world") == [15339, 1917]


class _Encoder:
    def __init__(self, name: str, count: object) -> None:
        self.name = name
        self._count = count

    def encode_ordinary(self, text: str) -> list[int]:
        if isinstance(self._count, Exception):
            raise self._count
        return [0] * (self._count(text) if callable(self._count) else len(text.encode()) // 4)


@pytest.mark.parametrize(
    "encoder",
    [
        _Encoder(O200K, None),  # the old fallback: a token per four bytes
        _Encoder(O200K, lambda text: len(load(CL100K).encode_ordinary(text))),  # the other encoding
        _Encoder(CL100K, lambda text: len(load(O200K).encode_ordinary(text))),
        _Encoder(CL100K, ValueError("broken")),
        _Encoder("r50k_base", lambda text: 1),
    ],
)
def test_self_check_refuses_a_broken_encoder(encoder: _Encoder) -> None:
    with pytest.raises(TokenizerError) as err:
        self_check(encoder)
    assert "\n" not in str(err.value)


def test_self_check_passes_the_real_ones() -> None:
    self_check(load(O200K))
    self_check(load(CL100K))
