"""Prices, worst cases and costs. Pure: no sockets, no database."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from relay.billing import Pricing
from relay.config import BillingConfig, PriceConfig
from relay.errors import PermissionDenied
from relay.types import KeyRecord, RelayRequest, Usage

MINI = PriceConfig(input=0.15, cached_input=0.075, output=0.6)
DEMO = PriceConfig(input=1.0, output=2.0)
OUT_ONLY = PriceConfig(input=0.0, output=3.0)  # output alone: worst cases independent of the prompt margin
EMBED = PriceConfig(input=0.02)
DALLE = PriceConfig(image=0.04, images={"1024x1024/hd": 0.08, "1792x1024": 0.12})
TTS = PriceConfig(characters=15.0)
FREE = PriceConfig(free=True)
PRICES = {"gpt-4o-mini": MINI, "demo": DEMO, "out-only": OUT_ONLY, "emb": EMBED, "dall-e-3": DALLE,
          "tts-1": TTS, "free-model": FREE}


def pricing(**billing: Any) -> Pricing:
    return Pricing(PRICES, BillingConfig(**billing))


def key(granted: float | None = None, key_id: str = "k1", group: str = "default") -> KeyRecord:
    return KeyRecord(id=key_id, name=key_id, key_hash="h-" + key_id, prefix="sk-abcd", granted_usd=granted, group=group)


def request(endpoint: str = "chat/completions", model: str = "demo", **body: Any) -> RelayRequest:
    data = {"model": model, **body}
    return RelayRequest(
        id="req_1", endpoint=endpoint, model=model, body=orjson.dumps(data), json=data, stream=False,
        wants_usage=False, key=key(), started=0.0,
    )


# -- Pricing.cost -----------------------------------------------------------------------------------------


def test_chat_cost_bills_cached_prompt_tokens_at_the_cached_price() -> None:
    p = pricing()
    usage = Usage(prompt_tokens=1000, completion_tokens=200, source="upstream", cached_tokens=400)
    cost = p.cost(MINI, request(model="gpt-4o-mini"), usage)
    assert cost == pytest.approx((600 * 0.15 + 400 * 0.075 + 200 * 0.6) / 1e6, rel=1e-12)


def test_chat_cost_without_a_cached_price_bills_cached_tokens_as_input() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, source="upstream", cached_tokens=400)
    assert pricing().cost(DEMO, request(), usage) == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6, rel=1e-12)


def test_cached_tokens_beyond_the_prompt_are_capped() -> None:
    usage = Usage(prompt_tokens=100, completion_tokens=0, source="upstream", cached_tokens=5000)
    assert pricing().cost(MINI, request(model="gpt-4o-mini"), usage) == pytest.approx(100 * 0.075 / 1e6, rel=1e-12)


def test_embeddings_cost_is_input_tokens_only() -> None:
    usage = Usage(prompt_tokens=5000, completion_tokens=0, source="upstream")
    req = request("embeddings", "emb", input="hello world")
    assert pricing().cost(EMBED, req, usage) == pytest.approx(5000 * 0.02 / 1e6, rel=1e-12)


@pytest.mark.parametrize(
    ("size", "quality", "n", "expected"),
    [
        ("1024x1024", "hd", 1, 0.08),  # size/quality entry
        ("1024x1024", "hd", 3, 0.24),  # times n
        ("1024x1024", "standard", 2, 0.08),  # no size/quality entry, no size entry: the default image price
        ("1792x1024", "standard", 2, 0.24),  # the size entry
        ("1792x1024", None, 1, 0.12),
        (None, None, None, 0.04),  # nothing given: one image at the default price
    ],
)
def test_image_cost_by_size_quality_and_n(size: str | None, quality: str | None, n: int | None, expected: float) -> None:
    body = {k: v for k, v in {"size": size, "quality": quality, "n": n}.items() if v is not None}
    req = request("images/generations", "dall-e-3", prompt="a cat", **body)
    p = pricing()
    assert p.cost(DALLE, req, Usage()) == pytest.approx(expected, rel=1e-12)
    assert p.worst_case(DALLE, req, 10) == pytest.approx(expected, rel=1e-12)  # an image's price is known up front


def test_speech_cost_by_characters() -> None:
    text = "Hello, world! " * 10  # 140 characters
    req = request("audio/speech", "tts-1", input=text, voice="alloy")
    p = pricing()
    assert p.cost(TTS, req, Usage()) == pytest.approx(140 * 15.0 / 1e6, rel=1e-12)
    assert p.worst_case(TTS, req, 35) == pytest.approx(140 * 15.0 / 1e6, rel=1e-12)


def test_free_model_costs_nothing() -> None:
    p = pricing()
    req = request(model="free-model", max_tokens=1000)
    assert p.cost(FREE, req, Usage(10_000, 10_000, "upstream")) == 0.0
    assert p.worst_case(FREE, req, 10_000) == 0.0


# -- Pricing.worst_case -------------------------------------------------------------------------------------


def test_worst_case_reserves_max_tokens_of_output() -> None:
    p = pricing()
    assert p.worst_case(OUT_ONLY, request(model="out-only", max_tokens=100), 50) == pytest.approx(100 * 3.0 / 1e6)


def test_worst_case_prefers_max_completion_tokens() -> None:
    p = pricing()
    req = request(model="out-only", max_tokens=100, max_completion_tokens=30)
    assert p.worst_case(OUT_ONLY, req, 50) == pytest.approx(30 * 3.0 / 1e6)


def test_worst_case_without_a_limit_uses_the_configured_cap() -> None:
    p = pricing(max_output_tokens=777)
    assert p.worst_case(OUT_ONLY, request(model="out-only"), 50) == pytest.approx(777 * 3.0 / 1e6)


def test_worst_case_multiplies_output_by_n() -> None:
    p = pricing(max_output_tokens=500)
    assert p.worst_case(OUT_ONLY, request(model="out-only", max_tokens=40, n=3), 5) == pytest.approx(120 * 3.0 / 1e6)
    assert p.worst_case(OUT_ONLY, request(model="out-only", n=2), 5) == pytest.approx(1000 * 3.0 / 1e6)


def test_worst_case_covers_at_least_the_estimated_prompt() -> None:
    p = pricing()
    worst = p.worst_case(DEMO, request(max_tokens=10), 1000)
    assert worst >= (1000 * 1.0 + 10 * 2.0) / 1e6


def test_embeddings_worst_case_has_no_output() -> None:
    p = pricing(max_output_tokens=100_000)
    worst = p.worst_case(EMBED, request("embeddings", "emb", input="x" * 400), 100)
    assert 100 * 0.02 / 1e6 <= worst < 1000 * 0.02 / 1e6


def test_actual_cost_never_exceeds_the_worst_case_when_usage_stays_in_bounds() -> None:
    rng = random.Random(7)
    p = pricing(max_output_tokens=2048)
    for _ in range(500):
        prompt = rng.randint(1, 5000)
        limit = rng.choice([None, rng.randint(1, 4096)])
        n = rng.choice([None, 1, 2, 4])
        body = {k: v for k, v in {"max_tokens": limit, "n": n}.items() if v is not None}
        req = request(model="gpt-4o-mini", **body)
        out_cap = (2048 if limit is None else limit) * (n or 1)
        usage = Usage(prompt, rng.randint(0, out_cap), "upstream", cached_tokens=rng.randint(0, prompt))
        assert p.cost(MINI, req, usage) <= p.worst_case(MINI, req, prompt) + 1e-15


# -- Pricing.price / multiplier ----------------------------------------------------------------------------


def test_a_model_without_a_price_is_refused() -> None:
    with pytest.raises(PermissionDenied) as e:
        pricing().price("unpriced-model")
    assert e.value.status == 403
    assert e.value.code == "model_not_priced"
    assert "unpriced-model" in e.value.message


def test_a_model_without_a_price_is_free_when_prices_are_not_required() -> None:
    p = pricing(require_prices=False)
    price = p.price("unpriced-model")
    assert price.free
    req = request(model="unpriced-model", max_tokens=10_000)
    assert p.worst_case(price, req, 10_000) == 0.0
    assert p.cost(price, req, Usage(10_000, 10_000, "upstream")) == 0.0


def test_a_priced_model_and_a_free_model_are_served() -> None:
    p = pricing()
    assert p.price("gpt-4o-mini") is MINI
    assert p.price("free-model").free


def test_group_multiplier() -> None:
    p = pricing(groups={"vip": 0.5, "resale": 1.5})
    assert p.multiplier("vip") == 0.5
    assert p.multiplier("resale") == 1.5
    assert p.multiplier("default") == 1.0
    assert p.multiplier("unknown-group") == 1.0


def test_group_multiplier_scales_worst_case_and_cost() -> None:
    p = pricing(groups={"resale": 1.5})
    req = request(model="out-only", max_tokens=100)
    m = p.multiplier("resale")
    assert p.worst_case(OUT_ONLY, req, 10) * m == pytest.approx(100 * 3.0 / 1e6 * 1.5)
    assert p.cost(OUT_ONLY, req, Usage(10, 40, "upstream")) * m == pytest.approx(40 * 3.0 / 1e6 * 1.5)
