"""The status page in a real headless browser (Debian's Chromium through Playwright) while the upstream is
healthy, then degraded (one request in four fails), then down (every request fails): the banner, one bar
per model coloured by availability, the uptime figures, a screenshot of each state under the test's
tmp_path, nothing private on the page, and a 375 px wide phone screen without horizontal scrolling.

Buckets of 1 s make the states show within seconds; the page refreshes itself in place every 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bench.fake_upstream import status
from tests.browser import chromium
from tests.conftest import ACCOUNTS, CLIENT_KEY, Relay, RelayFactory, Upstream

MODELS = ["demo", "gpt-4o-mini"]
GREEN, AMBER, RED = "rgb(47, 179, 68)", "rgb(245, 159, 0)", "rgb(224, 49, 49)"

pytestmark = pytest.mark.timeout(150)


def config(show_channels: bool = False) -> dict[str, Any]:
    return {
        "channels": [{"name": "fake", "type": "openai", "base_url": "{url}", "keys": list(ACCOUNTS), "models": MODELS}],
        "status": {"bucket": 1, "title": "Relay status", "show_channels": show_channels},
        "retry": {"attempts": 1, "failure_threshold": 1000},  # each failure reaches the client; no account rests
    }


async def start(relay_factory: RelayFactory, upstream: Upstream, show_channels: bool = False) -> Relay:
    cfg = config(show_channels)
    cfg["channels"][0]["base_url"] = upstream.url
    return await relay_factory(**cfg)


@contextlib.asynccontextmanager
async def traffic(relay: Relay, upstream: Upstream, phase: dict[str, str]) -> AsyncIterator[None]:
    """Requests to every model, one at a time, until the block ends; `phase["now"]` says how the upstream
    answers: healthy, degraded (every fourth round fails) or down (every request fails)."""
    client = openai.AsyncOpenAI(base_url=relay.v1, api_key=CLIENT_KEY, max_retries=0, timeout=10)

    async def run() -> None:
        for n in itertools.count():
            for model in MODELS:
                fail = phase["now"] == "down" or (phase["now"] == "degraded" and n % 4 == 0)
                for acc in ACCOUNTS:  # one request at a time: whichever account it reaches answers so
                    upstream.script[acc] = [status(500)] if fail else []
                with contextlib.suppress(openai.APIError):
                    await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            await asyncio.sleep(0.01)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def latest_colours(page: Any) -> dict[str, str]:
    """Per model, the computed colour of its newest bar that has data (the one still filling may not)."""
    colours: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('article[data-model]')].map(row => {
            const bars = [...row.querySelectorAll('.bar')].filter(b => !b.classList.contains('bar-none'));
            const last = bars[bars.length - 1];
            return [row.dataset.model, last ? getComputedStyle(last).backgroundColor : 'none'];
        }))"""
    )
    return colours


async def test_the_page_follows_the_upstream_from_healthy_to_degraded_to_down(
    relay_factory: RelayFactory, upstream: Upstream, tmp_path: Path,
) -> None:
    relay = await start(relay_factory, upstream)
    phase = {"now": "healthy"}
    async with chromium() as browser, traffic(relay, upstream, phase):
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(relay.url + "/status")
        assert await page.title() == "Relay status"
        seen: dict[str, dict[str, str]] = {}
        for name, banner, colour in (
            ("healthy", "All systems operational", GREEN),
            ("degraded", "Degraded performance", AMBER),
            ("down", "Major outage", RED),
        ):
            phase["now"] = name
            # the page refreshes itself (no reload here): wait for it to show the new state
            await page.wait_for_function(
                "([text, colour]) => document.getElementById('banner').textContent === text && "
                "[...document.querySelectorAll('article[data-model]')].every(row => { "
                "const bars = [...row.querySelectorAll('.bar')].filter(b => !b.classList.contains('bar-none')); "
                "return bars.length && getComputedStyle(bars[bars.length - 1]).backgroundColor === colour; })",
                arg=[banner, colour], timeout=30_000, polling=200,
            )
            shot = tmp_path / f"status-{name}.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0

            assert await page.inner_text("#banner") == banner
            rows = page.locator("article[data-model]")
            assert await rows.count() == len(MODELS)
            for i, model in enumerate(MODELS):
                row = rows.nth(i)
                assert await row.get_attribute("data-model") == model
                assert await row.locator(".bar").count() == 90
                for window in ("24h", "7d", "30d", "90d"):
                    assert re.fullmatch(r"\d{1,3}(\.\d\d)?%", await row.locator(f"dd[data-window='{window}']").inner_text())
                tip = await row.locator(".bar:not(.bar-none)").last.get_attribute("title")
                assert tip is not None and "UTC" in tip and "ok of" in tip
            seen[name] = await latest_colours(page)

            html = await page.content()
            for secret in ("fake", "acct-", "account 0", "account 1", "account 2", CLIENT_KEY, upstream.url):
                assert secret not in html, secret
        assert seen == {
            "healthy": dict.fromkeys(MODELS, GREEN), "degraded": dict.fromkeys(MODELS, AMBER),
            "down": dict.fromkeys(MODELS, RED),
        }

        phone = await browser.new_page(viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True)
        await phone.goto(relay.url + "/status")
        await phone.wait_for_selector("article[data-model]")
        width = await phone.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] == 375, width  # nothing wider than the screen: no horizontal scroll
        await phone.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)


async def test_channels_and_accounts_show_only_when_configured(
    relay_factory: RelayFactory, upstream: Upstream, tmp_path: Path,
) -> None:
    relay = await start(relay_factory, upstream, show_channels=True)
    phase = {"now": "healthy"}
    async with chromium() as browser, traffic(relay, upstream, phase):
        page = await browser.new_page()
        await page.goto(relay.url + "/status")
        await page.wait_for_selector("article[data-channel='fake']")
        text = await page.inner_text("main")
        assert "Channels: fake" in text
        await page.screenshot(path=str(tmp_path / "status-channels.png"), full_page=True)
