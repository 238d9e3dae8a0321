"""The cyclic GC's pauses over a long fixed-rate fan-out: app/core/gc_policy.py against none.

    python -m bench.gc_pauses                    # 45 s: GC_SWEEP_INTERVAL=300, then 0
    python -m bench.gc_pauses --seconds 120 --sweep 300 --sweep 0 --sweep 30

`fanout-1000-rate` keeps the better of two 8 s rounds, so a full collection every 20 s or so
seldom shows in it. Here one long window (1,000 subscribers, 10 events/s, the Node generator)
runs per setting, and the service's /metrics tells how many collections of each generation
ran and the longest pause, beside the generator's p99 and max latency.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import node_argv, run_load
from bench.servers import OURS, Pinning, run_server


async def _gc_samples(ws_url: str) -> dict[str, dict[str, float]]:
    base = ws_url.replace("ws://", "http://").rstrip("/")
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{base}/metrics")).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("cm_gc"):
            for sample in family.samples:
                out.setdefault(sample.name, {})[sample.labels.get("generation", "")] = sample.value
    return out


async def one(sweep: str, seconds: float, workdir: Path, pinning: Pinning) -> dict[str, Any]:
    async with run_server(OURS, workdir, pinning, extra_env={"GC_SWEEP_INTERVAL": sweep}) as server:
        config = {
            "mode": "fanout",
            "subscribers": 1000,
            "rate": 10,
            "window": 16,
            "maxLag": 500,
            "warmup": 1,
            "duration": seconds,
            "url": server.ws_url,
        }
        before = await _gc_samples(server.ws_url)
        result, _ = await run_load(
            node_argv(config), server.pid, pinning, seconds + 120, f"gc {sweep}"
        )
        after = await _gc_samples(server.ws_url)
    full = after["cm_gc_collections_total"]["2"] - before["cm_gc_collections_total"]["2"]
    return {
        "sweep": sweep,
        "p50": result["latency_ms"]["p50"],
        "p99": result["latency_ms"]["p99"],
        "max": result["latency_ms"]["max"],
        "lost/dup/ooo": (result["lost"], result["duplicated"], result["out_of_order"]),
        "full_collections": int(full),
        "mean_full_pause_ms": round(
            (after["cm_gc_pause_seconds_total"]["2"] - before["cm_gc_pause_seconds_total"]["2"])
            * 1000
            / max(full, 1),
            1,
        ),
        "max_full_pause_ms": round(after["cm_gc_max_pause_seconds"]["2"] * 1000, 1),
        "gen01_collections": int(
            sum(
                after["cm_gc_collections_total"][g] - before["cm_gc_collections_total"][g]
                for g in "01"
            )
        ),
        "sweeps": int(after["cm_gc_sweeps_total"][""]),
        "frozen": int(after["cm_gc_frozen_objects"][""]),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--sweep", action="append", help="GC_SWEEP_INTERVAL values (repeatable)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    pinning = Pinning.detect()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for sweep in args.sweep or ["300", "0"]:
                print(await one(sweep, args.seconds, Path(tmp), pinning), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
