"""Token counting: OpenAI's tokenizers offline, prompt recipes per endpoint, and the streamed-text counter."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from relay.tokens import (
    CL100K,
    IMAGE_LOW_TOKENS,
    IMAGE_TOKENS,
    O200K,
    CompletionCounter,
    count_text,
    encoding_name,
    prompt_tokens,
)

ROOT = Path(__file__).resolve().parents[2]


# Counts checked against tiktoken with OpenAI's published ranks files.
@pytest.mark.parametrize(
    ("text", "o200k", "cl100k"),
    [
        ("hello world", 2, 2),
        ("The quick brown fox jumps over the lazy dog.", 10, 10),
        ("你好，世界！今天天气很好。", 9, 16),
        ("def f(x):\n    return x**2  # square\n", 13, 13),
        ('café "quoted" naïve 🚀', 9, 10),
        ("<|endoftext|>", 7, 7),  # special-token text counts as plain text
        ("", 0, 0),
    ],
)
def test_known_counts(text: str, o200k: int, cl100k: int) -> None:
    assert count_text(text, "gpt-4o") == o200k
    assert count_text(text, "gpt-4") == cl100k


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K), ("gpt-4o-mini-2024-07-18", O200K), ("gpt-4.1-nano", O200K), ("gpt-4.5-preview", O200K),
        ("o1", O200K), ("o3-mini", O200K), ("o4-mini", O200K), ("gpt-5", O200K), ("chatgpt-4o-latest", O200K),
        ("deepseek-chat", O200K), ("qwen-max", O200K), ("", O200K), ("openai/gpt-4o", O200K),
        ("gpt-4", CL100K), ("gpt-4-turbo", CL100K), ("gpt-4-0613", CL100K), ("GPT-3.5-Turbo", CL100K),
        ("gpt-35-turbo", CL100K), ("text-embedding-3-small", CL100K), ("text-embedding-ada-002", CL100K),
    ],
)
def test_encoding_per_model(model: str, encoding: str) -> None:
    assert encoding_name(model) == encoding


def test_counts_with_no_network_and_no_cache(tmp_path: Path) -> None:
    """A fresh process, empty HOME and caches, every socket refused: both encodings still load."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from relay.tokens import count_text\n"
        "print(count_text('hello world', 'gpt-4o'), count_text('hello world', 'gpt-4'))\n"
    )
    env = {
        **os.environ, "HOME": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


def test_lone_surrogate_is_counted_not_raised() -> None:
    assert count_text("a\ud83db", "gpt-4o") >= 2


# -- prompts ----------------------------------------------------------------------------------------------

# OpenAI's cookbook example: the API reports 124 prompt tokens for gpt-4o models and 129 for gpt-4/3.5.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user",
     "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)]
)
def test_chat_recipe_matches_openai(model: str, expected: int) -> None:
    assert prompt_tokens("chat/completions", {"model": model, "messages": COOKBOOK}) == expected


def test_chat_parts_tools_and_tool_calls() -> None:
    m = "gpt-4o"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    body = {
        "model": m,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": tools,
    }
    expected = (
        3 + count_text("user", m) + count_text("What is in this image?", m) + IMAGE_LOW_TOKENS + IMAGE_TOKENS
        + 3 + count_text("assistant", m) + count_text(
            '[{"id":"c1","type":"function","function":{"name":"get_weather",'
            '"arguments":"{\\"city\\":\\"Paris\\"}"}}]', m
        )
        + 3 + count_text("tool", m) + count_text("c1", m) + count_text("sunny", m)
        + 3 + count_text('[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]', m)
    )
    assert prompt_tokens("chat/completions", body) == expected


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hello world"}, 2),
        ("completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["hello world", "hello world"]}, 4),
        ("completions", {"model": "davinci-002", "prompt": [1, 2, 3]}, 3),
        ("completions", {"model": "davinci-002", "prompt": [[1, 2], [3]]}, 3),
        ("embeddings", {"model": "text-embedding-3-small", "input": "hello world"}, 2),
        ("embeddings", {"model": "text-embedding-3-small",
                        "input": ["hello world", "The quick brown fox jumps over the lazy dog."]}, 12),
        ("embeddings", {"model": "text-embedding-3-small", "input": [[1, 2, 3, 4], [5]]}, 5),
        ("moderations", {"model": "omni-moderation-latest", "input": "hello world"}, 2),
        ("moderations", {"input": [{"type": "text", "text": "hello world"},
                                   {"type": "image_url", "image_url": {"url": "x"}}]}, 2 + IMAGE_TOKENS),
        ("images/generations", {"model": "dall-e-3", "prompt": "hello world"}, 2),
        ("audio/speech", {"model": "tts-1", "input": "hello world", "voice": "alloy"}, 2),
        ("audio/transcriptions", {"model": "whisper-1", "prompt": "hello world"}, 2),
        ("audio/transcriptions", {"model": "whisper-1"}, 0),
    ],
)
def test_prompt_per_endpoint(endpoint: str, body: dict[str, object], expected: int) -> None:
    assert prompt_tokens(endpoint, body) == expected


MALFORMED: list[object] = [
    {}, {"model": 5}, {"messages": "hi"}, {"messages": [1, 2]}, {"messages": [{"role": "user", "content": [5]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    {"messages": [{"content": {"weird": True}}], "tools": "nope"}, {"prompt": {"a": 1}}, {"prompt": [None]},
    {"input": 3.5}, {"input": [{"x": 1}]}, {"prompt": 7}, {"input": [b"bytes"]}, {1: 2, "model": None},
    {"messages": [{"role": "user", "content": "x"}],
     "response_format": {"type": "json_schema", "json_schema": {1: object()}}},
    ["not", "a", "mapping"], None,
]


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize(
    "endpoint",
    ["chat/completions", "completions", "embeddings", "moderations", "images/generations", "audio/speech",
     "audio/transcriptions", "responses"],
)
def test_malformed_bodies_never_raise(endpoint: str, body: object) -> None:
    n = prompt_tokens(endpoint, body)  # type: ignore[arg-type]
    assert isinstance(n, int) and n >= 0


def test_malformed_falls_back_to_bytes() -> None:
    body = {"messages": "x" * 400}
    assert prompt_tokens("chat/completions", body) == len('{"messages":""}' + "x" * 400) // 4


# -- string values and the counter ------------------------------------------------------------------------


def _random_text(rng: random.Random, n: int) -> str:
    words = ["hello", "world", "Ünïcode", "你好世界", "🚀", "12345", "x=1;", "it's", "\n", "\n\n", "  ", "\t", ".", "—"]
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(words)
        sep = rng.choice([" ", " ", " ", "", "\n", "  ", ". "])
        out.append(w + sep)
        size += len(w) + len(sep)
    return "".join(out)


def _escaped(text: str) -> bytes:
    import orjson

    return orjson.dumps(text)[1:-1]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_counter_batches_add_up_exactly(model: str) -> None:
    rng = random.Random(7)
    text = _random_text(rng, 200_000)
    counter = CompletionCounter(model)
    most = 0
    i = 0
    while i < len(text):
        step = rng.randint(1, 40)
        counter.add(_escaped(text[i : i + step]))
        most = max(most, counter.held)
        i += step
    assert counter.tokens(model) == count_text(text, model)
    assert most < 40 * 1024


def test_counter_without_spaces_stays_bounded() -> None:
    text = "你好世界今天天气很好" * 30_000  # 300 K characters, no space to cut at
    counter = CompletionCounter("gpt-4o")
    most = 0
    for i in range(0, len(text), 10):
        counter.add(_escaped(text[i : i + 10]))
        most = max(most, counter.held)
    exact = count_text(text, "gpt-4o")
    assert abs(counter.tokens() - exact) <= 10
    assert most < 100 * 1024


def test_counter_decodes_escapes_and_survives_bad_ones() -> None:
    c = CompletionCounter("gpt-4o")
    c.add(b'say \\"caf\\u00e9\\"')
    assert c.tokens() == count_text('say "café"', "gpt-4o")
    c = CompletionCounter("gpt-4o")
    c.add(b"fine ")
    c.add(b"\\ud83d lone")  # a lone surrogate escape
    c.add(b"\xff bad utf-8")
    assert c.tokens() > 3
    # a surrogate pair split across two events is one character
    c = CompletionCounter("gpt-4o")
    c.add(b"\\ud83d")
    c.add(b"\\ude80")
    assert c.tokens() == count_text("🚀", "gpt-4o")


def test_counter_counts_once() -> None:
    c = CompletionCounter()
    c.add(b"hello world")
    assert c.tokens() == 2
    assert c.tokens() == 2
    c.add(b" hello")
    assert c.tokens() == 3
    assert CompletionCounter().tokens() == 0
