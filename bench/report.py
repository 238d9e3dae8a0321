"""Ratios to the references, the issues' targets, JSON lines and the final table."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.servers import NODE_WS, OURS, REFERENCE, REFERENCES

Row = dict[str, Any]


def _p99(row: Row) -> float | None:
    latency = row.get("latency_ms") or {}
    value = latency.get("p99")
    return float(value) if isinstance(value, int | float) else None


def _memory(row: Row) -> float | None:
    value = row.get("rss_per_conn_kb", row.get("server_rss_peak_kb"))
    return float(value) if isinstance(value, int | float) else None


def _get(key: str) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        value = row.get(key)
        return float(value) if isinstance(value, int | float) else None

    return get


# ratio name → how to read the figure from a row; ours / reference, rounded.
RATIOS: dict[str, Callable[[Row], float | None]] = {
    "delivered_per_s": _get("delivered_per_s"),
    "p99": _p99,
    "memory": _memory,
    "conn_per_s": _get("conn_per_s"),
    "cpu": _get("server_cpu_pct"),
    # server CPU per delivery (per connection in the storm): lower is better
    "cost": _get("server_cpu_us_per_unit"),
}


# The key of ours's ratios to each reference in a row (`ratio` stays the bare-websockets one).
RATIO_KEYS: dict[str, str] = {REFERENCE: "ratio", NODE_WS: "ratio_node_ws"}
assert set(RATIO_KEYS) == set(REFERENCES)


def ratios(ours: Row, reference: Row) -> dict[str, float]:
    """Each figure of `ours` divided by the reference's, where both have it."""
    out: dict[str, float] = {}
    for name, read in RATIOS.items():
        a, b = read(ours), read(reference)
        if a is not None and b:
            out[name] = round(a / b, 3)
    return out


def add_ratios(best: dict[str, Row]) -> None:
    """Put ours's ratios to each reference measured in the same run into ours's row."""
    ours = best.get(OURS)
    if ours is None or "skipped" in ours or "failed" in ours:
        return
    for reference, key in RATIO_KEYS.items():
        row = best.get(reference)
        if row is not None and "skipped" not in row and "failed" not in row:
            ours[key] = ratios(ours, row)


@dataclass(frozen=True)
class Target:
    """One target of the issue: a ratio (or an absolute figure) of one scenario, and its bound."""

    scenario: str
    text: str
    read: Callable[[Row], float | None]
    compare: Callable[[float, float], bool]
    bound: float

    def check(self, rows: dict[tuple[str, str], Row]) -> tuple[float | None, bool | None]:
        row = rows.get((self.scenario, OURS))
        if row is None or "skipped" in row or "failed" in row:
            return None, None
        value = self.read(row)
        if value is None:
            return None, None
        return value, self.compare(value, self.bound)


def _ratio(name: str, reference: str = REFERENCE) -> Callable[[Row], float | None]:
    return lambda row: (row.get(RATIO_KEYS[reference]) or {}).get(name)


TARGETS = (
    Target(
        "fanout-1000-max", "deliveries/s ≥ 0.9× ref", _ratio("delivered_per_s"), operator.ge, 0.9
    ),
    Target("fanout-1000-max", "p99 ≤ 1.2× ref", _ratio("p99"), operator.le, 1.2),
    Target("channels-1000", "deliveries/s ≥ 0.9× ref", _ratio("delivered_per_s"), operator.ge, 0.9),
    Target(
        "channels-1000",
        "deliveries/s ≥ 1.0× node ws",
        _ratio("delivered_per_s", NODE_WS),
        operator.ge,
        1.0,
    ),
    Target("fanout-1000-rate", "p99 ≤ 1.2× ref", _ratio("p99"), operator.le, 1.2),
    Target("idle-10000", "memory/conn ≤ 1.3× ref", _ratio("memory"), operator.le, 1.3),
    Target("idle-10000", "memory/conn ≤ 20 KB", _get("rss_per_conn_kb"), operator.le, 20.0),
    Target("idle-10000", "memory/conn ≤ 8 KB", _get("rss_per_conn_kb"), operator.le, 8.0),
    Target("storm-1000", "connections/s ≥ 0.9× ref", _ratio("conn_per_s"), operator.ge, 0.9),
    Target("rest-ws", "p99 < 20 ms (SQLite)", _p99, operator.lt, 20.0),
    Target("rest-ws-postgres", "p99 < 20 ms (PostgreSQL)", _p99, operator.lt, 20.0),
)


def correctness_problems(rows: Iterable[Row]) -> list[str]:
    """Rows whose lost, duplicated or out-of-order counts are not zero."""
    problems = []
    for row in rows:
        bad = {k: row.get(k) for k in ("lost", "duplicated", "out_of_order") if row.get(k)}
        if bad:
            problems.append(f"{row['scenario']} on {row['server']}: {bad}")
    return problems


# --- output ---------------------------------------------------------------------------------------


def json_line(row: Row) -> str:
    return orjson.dumps(row).decode()


def append(path: Path, row: Row) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        out.write(orjson.dumps(row) + b"\n")


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float):
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _extra(row: Row) -> str:
    if "rss_per_conn_kb" in row:
        return f"{row['rss_per_conn_kb']:.1f} KB/conn"
    if "conn_per_s" in row:
        return f"{row['conn_per_s']:,.0f} conn/s"
    if "publish_per_s" in row:
        return f"{row['publish_per_s']:,.0f} pub/s"
    if "metrics_cost" in row:
        cost = row["metrics_cost"]
        snap = cost.get("snapshot_ms") or {}
        rows = cost.get("total_rows")
        size = f"{rows / 1e6:.1f}M rows: " if isinstance(rows, int | float) else ""
        return f"{size}snapshot {snap.get('median')} ms median, {snap.get('first')} ms first"
    return ""


def _vs(row: Row, reference: str) -> str:
    ratio = row.get(RATIO_KEYS[reference]) or {}
    labels = {
        "delivered_per_s": "del/s",
        "p99": "p99",
        "memory": "mem",
        "conn_per_s": "conn/s",
        "cost": "cpu/unit",
    }
    return ", ".join(f"{labels[k]} ×{v:.2f}" for k, v in ratio.items() if k in labels)


SHORT_NAMES = {OURS: "ours", REFERENCE: "ref", NODE_WS: "node"}

# A generator this busy may be what limits the figure: the row is marked, not dropped.
LOAD_BOUND_PCT = 90.0


def table(rows: list[Row]) -> str:
    """The run as a Markdown table (reads fine in a terminal, pastes into the docs)."""
    header = (
        "| scenario | server | delivered/s | p50 ms | p99 ms | max ms | lost/dup/ooo "
        "| CPU % | other % | CPU µs/unit | peak RSS MB | | vs reference | vs node ws |"
    )
    lines = [header, "|" + "---|" * 14]
    for row in rows:
        name = row["scenario"]
        server = SHORT_NAMES.get(row["server"], row["server"])
        if "skipped" in row or "failed" in row:
            note = row.get("skipped") or f"FAILED: {row.get('failed')}"
            lines.append(f"| {name} | {server} | {note} |" + " |" * 11)
            continue
        latency = row.get("latency_ms") or {}
        counts = "/".join(str(row.get(k, "–")) for k in ("lost", "duplicated", "out_of_order"))
        load = row.get("load_cpu_pct")
        mark = " †" if isinstance(load, int | float) and load >= LOAD_BOUND_PCT else ""
        peak = row.get("server_rss_peak_kb")
        lines.append(
            f"| {name} | {server} | {_num(row.get('delivered_per_s'))}{mark} "
            f"| {_num(latency.get('p50'), 2)} | {_num(latency.get('p99'), 2)} "
            f"| {_num(latency.get('max'), 1)} | {counts} | {_num(row.get('server_cpu_pct'))} "
            f"| {_num(row.get('other_on_server_core_pct'))} "
            f"| {_num(row.get('server_cpu_us_per_unit'), 1)} "
            f"| {_num(peak / 1024 if isinstance(peak, int | float) else None, 1)} "
            f"| {_extra(row)} | {_vs(row, REFERENCE)} | {_vs(row, NODE_WS)} |"
        )
    lines.append(
        f"\n† the load generator used ≥ {LOAD_BOUND_PCT:.0f}% of its core: "
        "the figure may be the generator's limit. other % = busy time of the server's core not "
        "spent in the server (other processes, loopback TCP in softirq). CPU µs/unit = server "
        "CPU per delivered event (per connection in storm-1000). ref = bare websockets "
        "(bench/reference_server.py), node = Node.js ws (bench/node/reference_server.mjs)."
    )
    return "\n".join(lines)


def targets_report(rows: list[Row]) -> str:
    """Each target of the issue: the figure of this run and met / MISSED / not measured."""
    by_key = {(row["scenario"], row["server"]): row for row in rows}
    lines = ["| target | scenario | this run | met? |", "|---|---|---|---|"]
    for target in TARGETS:
        if not any(key[0] == target.scenario for key in by_key):
            continue
        value, met = target.check(by_key)
        shown = "–" if value is None else f"{value:.2f}"
        verdict = "not measured" if met is None else "met" if met else "MISSED"
        lines.append(f"| {target.text} | {target.scenario} | {shown} | {verdict} |")
    return "\n".join(lines)
