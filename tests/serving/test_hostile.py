"""The hostile-input run (``loraops_serving.hostile``) against the local front: over 300 malformed, oversized,
deeply nested, invalid-Unicode, wrong-type, unknown-adapter requests and dropped streams get only 4xx (the
dropped streams aside), ``/ping`` stays 200, the engine is idle afterwards and the process's memory stays flat."""

from __future__ import annotations

import gc
import json

import pytest

from loraops_serving import hostile


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def server(engine):
    from loraops_serving.app import LocalFront
    from loraops_serving.service import Service

    with LocalFront(Service(engine)) as url:
        yield url


def test_a_hostile_run_gets_only_4xx_with_ping_healthy_and_memory_flat(server, engine):
    hostile.run(server, requests=60)  # warm-up: first-use allocations are not growth
    gc.collect()
    before = rss_bytes()
    counts = hostile.run(server, requests=320)
    scheduler = engine.scheduler
    assert scheduler.wait_for(scheduler.idle, 60), "dropped streams still hold the engine"
    gc.collect()
    grown = rss_bytes() - before
    print(json.dumps({**counts, "rss_growth_mib": round(grown / 2**20, 1)}))
    statuses = {status: n for status, n in counts["statuses"].items() if status != "dropped"}
    assert all(400 <= int(status) < 500 for status in statuses), counts
    assert sum(statuses.values()) >= 300 and counts["statuses"].get("dropped", 0) > 0
    assert counts["pings"] == {"200": 17}
    assert {"413", "404", "400"} <= set(statuses)
    assert grown < 100 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB over the run"
