"""kill -9 under 1,000 requests in flight loses no served work: the ledger's journal.

The relay runs as a process on a real SQLite file, with a flush interval long enough that most of what it
served is not yet in the store when it is killed. After the restart, every request whose client read a
complete 2xx answer (streamed or not) has its ledger row, found by the x-request-id the client got; each
key's spent equals its ledger sum and no key is below zero.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from relay.auth import new_secret
from relay.config import hash_key
from relay.store import Store
from relay.types import KeyRecord
from tests.conftest import CLIENT_KEY
from tests.procs import Processes, auth, exit_code

IN_FLIGHT = 1000
# input is free and 8 output tokens cost 8 * 125000 / 1e6 = $1 exactly: sums of whole dollars are exact
PRICES = {"demo": {"input": 0, "output": 125000}}
GRANTED = 100_000.0


@pytest.fixture
def processes(tmp_path: Path) -> Any:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def books(db: Path) -> tuple[set[str], dict[str, tuple[float | None, float]], dict[str, float]]:
    """(request ids in the ledger, key id -> (granted, spent), key id -> ledger sum of cost)."""
    conn = sqlite3.connect(db)
    try:
        ids = {r for (r,) in conn.execute("SELECT request_id FROM usage")}
        keys = {k: (g, s) for k, g, s in conn.execute("SELECT id, granted_usd, spent_usd FROM keys")}
        sums = {k: float(v) for k, v in conn.execute("SELECT key_id, SUM(cost_usd) FROM usage GROUP BY key_id")}
    finally:
        conn.close()
    return ids, keys, sums


async def test_kill_9_under_1000_in_flight_loses_no_answered_request(processes: Processes, tmp_path: Path) -> None:
    # ~1 s before the first byte, then 8 events 125 ms apart: requests stay in flight, at a few hundred a second
    upstream = await processes.fake_upstream("--latency-ms", "1000", "--chunks", "8", "--chunk-delay-ms", "125")
    db = tmp_path / "relay.db"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "shutdown_grace": 5},
        "database": str(db),
        "client_keys": [{"name": "test", "key": CLIENT_KEY}],  # unlimited
        "channels": [{"name": "fake", "type": "openai", "base_url": upstream, "keys": ["acct-0"], "models": ["demo"]}],
        "prices": PRICES,
        "ledger": {"flush_interval": 30.0, "batch_size": 100000},  # nothing reaches the store before the kill
        "log_level": "warning",
    }))
    store = Store(str(db))
    await store.open()
    secret = new_secret()
    key = await store.create_key(KeyRecord(
        id="key_" + uuid.uuid4().hex[:16], name="limited", key_hash=hash_key(secret), prefix=secret[:7],
        granted_usd=GRANTED,
    ))
    await store.close()
    secrets = [secret, CLIENT_KEY]

    proc, url = await processes.relay(config)
    port = int(url.rsplit(":", 1)[1])
    answered: list[str] = []  # x-request-id of every complete 2xx answer a client read
    by_key = [0, 0]  # how many of those each key had
    in_flight = 0
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with http.get(url + "/v1/models", headers=auth(secret)) as resp:  # the key cache has it
            assert resp.status == 200

        async def client(i: int) -> None:
            nonlocal in_flight
            n = 0
            while True:
                stream = (i + n) % 2 == 0
                in_flight += 1
                try:
                    async with http.post(url + "/v1/chat/completions", json={**body, "stream": stream},
                                         headers=auth(secrets[i % 2])) as resp:
                        data = await resp.read()  # to the end: a cut body raises
                        rid = resp.headers.get("x-request-id")
                except (TimeoutError, aiohttp.ClientError):
                    return  # the relay is gone
                finally:
                    in_flight -= 1
                n += 1
                complete = data.rstrip().endswith(b"data: [DONE]") if stream else data.startswith(b"{")
                if resp.status == 200 and complete and rid:
                    answered.append(rid)
                    by_key[i % 2] += 1

        clients = [asyncio.create_task(client(i)) for i in range(IN_FLIGHT)]
        deadline = time.monotonic() + 60
        # killed while it serves steadily: many answered since the last flush, 1,000 waiting for theirs
        while len(answered) < 800 or in_flight < IN_FLIGHT:
            assert time.monotonic() < deadline, f"{len(answered)} answered, {in_flight} in flight:\n{processes.log()}"
            await asyncio.sleep(0.01)
        held = in_flight
        proc.send_signal(signal.SIGKILL)  # this PID only
        assert await exit_code(proc, 5) == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert held >= IN_FLIGHT

    in_store, _, _ = books(db)
    missing = set(answered) - in_store
    assert missing, "every answered request was already in the store: the kill came too late to test the journal"

    # restarted on the same port (the same lease holder): the journal is written before it serves
    proc, url = await processes.relay(config, port=port)
    ids, keys, sums = books(db)
    assert set(answered) <= ids, f"{len(set(answered) - ids)} answered requests have no ledger row"
    for key_id, (granted, spent) in keys.items():
        assert spent == pytest.approx(sums.get(key_id, 0.0), abs=1e-9), key_id
        if granted is not None:
            assert spent <= granted + 1e-9, (key_id, spent, granted)
    # each answered request costs $1: charged at least that (requests answered as the kill came may add)
    assert keys[key.id][1] >= by_key[0] * 1.0
    assert keys["cfg-test"][1] >= by_key[1] * 1.0
    proc.send_signal(signal.SIGTERM)
    assert await exit_code(proc, 15) == 0, processes.log()
    assert not list((tmp_path / "relay-journal").glob("*.journal")), "a clean stop leaves no journal"
