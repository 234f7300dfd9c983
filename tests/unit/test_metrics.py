"""The request figures /metrics shows: counted per label set, histogram buckets as Prometheus defines them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_tokens_and_latency_buckets() -> None:
    m = Metrics(["demo"], lambda: [])
    m.observe_request("demo", "fake", 200, 0.005, None, 10, 5)  # exactly on a bound: counted in that bucket
    m.observe_request("demo", "fake", 201, 0.3, 0.02, 7, 0)
    m.observe_request("demo", "fake", 429, 1000.0, None, 0, 0)  # past every bound: +Inf only
    m.observe_request("not-served", None, 404, 0.001, None, 0, 0)  # a client cannot grow the label set
    s = samples(m)
    assert s[("relay_requests_total", (("channel", "fake"), ("model", "demo"), ("status", "2xx")))] == 2
    assert s[("relay_requests_total", (("channel", "fake"), ("model", "demo"), ("status", "4xx")))] == 1
    assert s[("relay_requests_total", (("channel", "none"), ("model", "other"), ("status", "4xx")))] == 1
    bucket = {le: s[("relay_request_duration_seconds_bucket", (("le", le), ("model", "demo")))]
              for le in ("0.005", "0.25", "0.5", "300.0", "+Inf")}
    assert bucket == {"0.005": 1, "0.25": 1, "0.5": 2, "300.0": 2, "+Inf": 3}
    assert s[("relay_request_duration_seconds_count", (("model", "demo"),))] == 3
    assert s[("relay_request_duration_seconds_sum", (("model", "demo"),))] == 1000.305
    assert s[("relay_time_to_first_token_seconds_count", (("model", "demo"),))] == 1
    assert s[("relay_time_to_first_token_seconds_bucket", (("le", "0.01"), ("model", "demo")))] == 0
    assert s[("relay_time_to_first_token_seconds_bucket", (("le", "0.025"), ("model", "demo")))] == 1
    assert s[("relay_tokens_total", (("kind", "prompt"), ("model", "demo")))] == 17
    assert s[("relay_tokens_total", (("kind", "completion"), ("model", "demo")))] == 5
