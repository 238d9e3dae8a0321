"""py-spy on the server during a scenario's measurement window, and a summary of where time went.

`python -m bench --profile DIR …` attaches `py-spy record` to the server under test (the service
or the reference) when the load generator starts its window and detaches when it ends (py-spy
runs on the load CPU). DIR gets
the collapsed stacks (`<scenario>-<server>.txt`, for flame graph tools) and a summary of the top
frames by own time and by inclusive time (`….summary.txt`). Profiled rows are marked
`"profiled": true`: sampling slows the server a little, so keep them out of comparisons.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import signal
import sys
from pathlib import Path

from bench.servers import ROOT, Pinning

# A frame of py-spy's raw output: "function (path/to/file.py:123)".
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy binary: beside this interpreter (the venv), or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    """`py-spy record` of one process, started and stopped around a window."""

    def __init__(
        self, pid: int, output: Path, pinning: Pinning, rate: int = 200, native: bool = False
    ) -> None:
        self.pid = pid
        self.native = native
        self.output = output
        self.pinning = pinning
        self.rate = rate
        self.error: str | None = None
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return
        argv = [
            binary,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--output",
            str(self.output),
        ]
        if self.native:
            argv.append("--native")  # C frames too: uvloop, orjson, the kernel boundary
        self._process = await asyncio.create_subprocess_exec(
            *self.pinning.wrap(argv, self.pinning.load),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.3)  # attach before the window opens
        if self._process.returncode is not None:
            self.error = await self._stderr()

    async def stop(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.error = "py-spy did not stop within 30 s"
        if not self.output.exists():
            self.error = self.error or await self._stderr() or "py-spy wrote nothing"

    async def _stderr(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        return (await self._process.stderr.read()).decode(errors="replace")[-500:]


def _short(frame: str, with_line: bool = True) -> str:
    """`func (…/site-packages/uvicorn/x.py:12)` → `func (uvicorn/x.py:12)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{match['line']}" if match["line"] and with_line else ""
    return f"{match['func']} ({path}{line})"


def summarize(raw: Path, top: int = 25) -> tuple[str, dict[str, list[tuple[str, float]]]]:
    """Top frames of the event loop's thread by own and inclusive share, as text and data.

    Only stacks rooted in `<module>` (the main thread, where the event loop runs; with
    --native a libc frame or two comes first) count:
    py-spy takes a thread blocked in `SimpleQueue.get` (aiosqlite's worker) for a busy one,
    which would otherwise dilute every share.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = other_threads = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frames name the process and thread, not code.
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if not any(f.startswith("<module>") for f in frames[:3]):
            other_threads += count
            continue
        total += count
        own[_short(frames[-1])] += count  # by line: which statement
        for function in {_short(f, with_line=False) for f in frames}:  # by function
            inclusive[function] += count
    if not total:
        return "no samples", {"own": [], "inclusive": []}
    data = {
        "own": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(top)],
    }
    lines = [
        f"{total} samples of the event loop's thread ({other_threads} of other threads left out)",
        "",
        "own time (the frame itself):",
    ]
    lines += [f"  {share:5.1f}%  {frame}" for frame, share in data["own"]]
    lines += ["  (time in C — uvloop, orjson, the socket write — counts to the line calling it)"]
    lines += ["", "inclusive time (the function and what it calls):"]
    lines += [f"  {share:5.1f}%  {frame}" for frame, share in data["inclusive"]]
    return "\n".join(lines), data
