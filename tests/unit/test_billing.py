"""Prices, worst cases and per-key balances (reserve-then-settle). Pure: no sockets, no database."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from relay.billing import Balances, InsufficientQuota, Pricing
from relay.config import BillingConfig, PriceConfig
from relay.errors import PermissionDenied, error_response
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


def test_group_multiplier_scales_reservation_and_charge() -> None:
    p = pricing(groups={"resale": 1.5})
    b = Balances()
    k = key(granted=1.0, group="resale")
    req = request(model="out-only", max_tokens=100)
    m = p.multiplier(k.group)
    r = b.reserve(k, p.worst_case(OUT_ONLY, req, 10) * m, OUT_ONLY, m)
    assert r.amount == pytest.approx(100 * 3.0 / 1e6 * 1.5)
    charged = b.settle(r, p.cost(r.price, req, Usage(10, 40, "upstream")) * r.multiplier)
    assert charged == pytest.approx(40 * 3.0 / 1e6 * 1.5)
    assert b.spent("k1") == pytest.approx(charged)


# -- Balances ---------------------------------------------------------------------------------------------


def test_reserve_refuses_an_exhausted_key() -> None:
    b = Balances()
    b.load({"k1": 1.0})
    for amount in (0.5, 0.0):  # even a free request: nothing is left
        with pytest.raises(InsufficientQuota) as e:
            b.reserve(key(granted=1.0), amount, DEMO, 1.0)
        assert e.value.status == 429
        assert e.value.code == "insufficient_quota"


def test_reserve_refuses_when_the_worst_case_does_not_fit() -> None:
    b = Balances()
    k = key(granted=1.0)
    r1 = b.reserve(k, 0.625, DEMO, 1.0)
    with pytest.raises(InsufficientQuota):
        b.reserve(k, 0.5, DEMO, 1.0)  # 0.375 left
    r2 = b.reserve(k, 0.375, DEMO, 1.0)  # fits exactly
    assert b.remaining(k) == 0.0
    with pytest.raises(InsufficientQuota):
        b.reserve(k, 0.0, DEMO, 1.0)
    b.settle(r1, 0.125)
    b.settle(r2, 0.25)
    assert b.spent("k1") == 0.375
    assert b.remaining(k) == 0.625


def test_insufficient_quota_renders_as_openai_error_without_retry() -> None:
    b = Balances()
    with pytest.raises(InsufficientQuota) as e:
        b.reserve(key(granted=0.001), 0.5, DEMO, 1.0)
    resp = error_response(e.value)
    assert resp.status == 429
    assert resp.headers["x-should-retry"] == "false"
    assert resp.content_type == "application/json"
    assert resp.body is not None
    body = orjson.loads(resp.body)  # type: ignore[arg-type]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "insufficient_quota"
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["message"]


def test_settle_charges_the_actual_cost_and_releases_the_reservation() -> None:
    b = Balances()
    k = key(granted=10.0)
    r = b.reserve(k, 4.0, DEMO, 1.0)
    assert b.remaining(k) == 6.0
    assert b.settle(r, 1.5) == 1.5
    assert b.spent("k1") == 1.5
    assert b.remaining(k) == 8.5


def test_settle_never_charges_more_than_was_reserved() -> None:
    b = Balances()
    k = key(granted=10.0)
    r = b.reserve(k, 2.0, DEMO, 1.0)
    assert b.settle(r, 7.0) == 2.0
    assert b.spent("k1") == 2.0
    assert b.remaining(k) == 8.0


def test_settle_of_a_failed_request_charges_nothing() -> None:
    b = Balances()
    k = key(granted=1.0)
    r = b.reserve(k, 1.0, DEMO, 1.0)
    assert b.settle(r, 0.0) == 0.0
    assert b.settle(b.reserve(k, 1.0, DEMO, 1.0), -3.0) == 0.0  # a negative cost is no refund
    assert b.spent("k1") == 0.0
    assert b.remaining(k) == 1.0


def test_concurrent_reservations_never_take_a_key_below_zero() -> None:
    rng = random.Random(3)
    b = Balances()
    k = key(granted=5.0)
    open_: list[Any] = []
    for _ in range(2000):
        if open_ and rng.random() < 0.5:
            r = open_.pop(rng.randrange(len(open_)))
            b.settle(r, rng.uniform(0, r.amount * 1.5))
        else:
            try:
                open_.append(b.reserve(k, rng.uniform(0, 0.5), DEMO, 1.0))
            except InsufficientQuota:
                pass
        assert b.spent("k1") <= 5.0 + 1e-9
        remaining = b.remaining(k)
        assert remaining is not None and remaining >= -1e-9
    for r in open_:
        b.settle(r, r.amount)
    assert b.spent("k1") <= 5.0 + 1e-9


def test_unlimited_keys_are_never_refused() -> None:
    b = Balances()
    b.load({"k1": 1e9})
    k = key(granted=None)
    assert b.remaining(k) is None
    rs = [b.reserve(k, 1e6, DEMO, 1.0) for _ in range(100)]
    for r in rs:
        b.settle(r, 1e6)
    assert b.spent("k1") == pytest.approx(1e9 + 1e8)
    assert b.remaining(k) is None


def test_balances_are_per_key_and_loaded_spent_counts() -> None:
    b = Balances()
    b.load({"a": 0.75})
    a, other = key(granted=1.0, key_id="a"), key(granted=1.0, key_id="b")
    with pytest.raises(InsufficientQuota):
        b.reserve(a, 0.5, DEMO, 1.0)
    r = b.reserve(other, 1.0, DEMO, 1.0)  # b's balance is untouched by a's spending
    b.settle(r, 1.0)
    assert b.spent("a") == 0.75 and b.spent("b") == 1.0
    assert b.remaining(a) == 0.25


@pytest.mark.parametrize(("granted", "price", "n"), [(0.3, 0.1, 3), (1.0, 0.1, 10), (0.07, 0.01, 7), (2.2, 0.11, 20)])
def test_a_balance_covering_exactly_n_requests_serves_all_n(granted: float, price: float, n: int) -> None:
    """Decimal prices do not add up exactly in floats; the last request that fits must still be served."""
    for settle_each in (False, True):  # all in flight at once, or one after another
        b = Balances()
        k = key(granted=granted)
        reservations = []
        for _ in range(n):
            r = b.reserve(k, price, DEMO, 1.0)
            if settle_each:
                b.settle(r, price)
            else:
                reservations.append(r)
        with pytest.raises(InsufficientQuota) as e:
            b.reserve(k, price, DEMO, 1.0)
        assert "exhausted" in e.value.message
        for r in reservations:
            b.settle(r, price)
        assert b.spent("k1") == pytest.approx(granted, abs=1e-9)
        assert b.spent("k1") <= granted + 1e-9
