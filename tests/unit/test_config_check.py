"""Start-up warnings: one line for each thing an operator most likely did not mean."""

from __future__ import annotations

from typing import Any

from relay.config import parse_config
from relay.config_check import DEMO_KEY, warnings


def cfg(**raw: Any) -> Any:
    base: dict[str, Any] = {
        "admin_token": "t" * 32,
        "channels": [{"name": "c", "base_url": "http://u", "keys": ["k"], "models": ["a", "b"]}],
        "prices": {"a": {"input": 1}, "b": {"input": 1}},
    }
    return parse_config({**base, **raw}, {})


def test_a_sound_config_has_no_warning() -> None:
    assert warnings(cfg()) == []


def test_each_warning() -> None:
    assert any("without a price" in w and "refused" in w and ": b" in w for w in warnings(cfg(prices={"a": {"input": 1}})))
    assert any("served free" in w for w in warnings(cfg(prices={}, billing={"require_prices": False})))
    assert any("no channel serves any model" in w for w in warnings(cfg(channels=[])))
    assert any("admin API is disabled" in w for w in warnings(cfg(admin_token="")))
    demo = cfg(client_keys=[{"name": "demo", "key": DEMO_KEY}])
    assert warnings(demo) == []  # on 127.0.0.1 the demo key harms no one
    assert any("public demo key" in w for w in warnings(demo, "0.0.0.0"))
    assert any("public demo key" in w for w in warnings(cfg(client_keys=[{"name": "d", "key": DEMO_KEY}],
                                                            server={"host": "relay.example.com"})))
