"""What /proc says about a process: CPU time and memory, sampled around a measurement window."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process: wall clock, CPU seconds (all threads), memory in kB.

    `core_busy` is the busy time of the CPU the server is pinned to, whoever used it: the
    difference to the server's own CPU time is what else ran there (other processes, and the
    kernel's loopback work), the noise of that window.
    """

    wall: float
    cpu_seconds: float
    rss_kb: int
    hwm_kb: int
    core_busy: float | None = None


def core_busy_seconds(cpu: int) -> float | None:
    """Busy time of one CPU since boot (user+nice+system+irq+softirq+steal), in seconds."""
    prefix = f"cpu{cpu} "
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith(prefix):
                v = [int(x) for x in line.split()[1:9]]
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLOCK_TICKS
    return None


def _status_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def sample(pid: int, core: int | None = None) -> Sample:
    """Read utime+stime from /proc/PID/stat and VmRSS/VmHWM from /proc/PID/status."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        raw = stat.read()
    # The command name (field 2) may hold spaces; the fields we want follow its closing paren.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss, hwm = _status_kb(pid)
    busy = core_busy_seconds(core) if core is not None else None
    return Sample(time.monotonic(), (utime + stime) / CLOCK_TICKS, rss, hwm, busy)


def cpu_percent(start: Sample, end: Sample) -> float | None:
    """CPU used between two samples, in percent of one core."""
    wall = end.wall - start.wall
    if wall <= 0:
        return None
    return round(100.0 * (end.cpu_seconds - start.cpu_seconds) / wall, 1)


def other_on_core_percent(start: Sample, end: Sample) -> float | None:
    """Busy time of the server's core not spent in the server, in percent of the window."""
    wall = end.wall - start.wall
    if wall <= 0 or start.core_busy is None or end.core_busy is None:
        return None
    other = (end.core_busy - start.core_busy) - (end.cpu_seconds - start.cpu_seconds)
    return round(max(0.0, 100.0 * other / wall), 1)


def machine_busy_percent(seconds: float = 0.5) -> float:
    """How busy the whole machine is over a short interval, in percent of all CPUs."""

    def totals() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            v = [int(x) for x in stat.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    total0, idle0 = totals()
    time.sleep(seconds)
    total1, idle1 = totals()
    spent = total1 - total0
    return 100.0 * (spent - (idle1 - idle0)) / spent if spent else 0.0
