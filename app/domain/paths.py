"""Path patterns of reservations, and whether two of them can name the same file.

A pattern is a workspace path, relative (``src/api/routes.py``), a directory (``src/api`` or
``src/api/``: the directory and everything under it) or a glob: ``*`` and ``?`` within one path
segment, ``[…]`` a character class, ``**`` any number of segments (``src/**``, ``**/*.md``).

`overlaps(a, b)` answers "could one file be matched by both?" It never misses an overlap; for
two globs it may report one that no real file would make (it compares what the globs fix before
their first wildcard), which for an advisory lock is the safe side to err on.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_PATH_LENGTH = 500
_WILD = re.compile(r"[*?\[]")


def normalise(path: str) -> str:
    """The canonical form: no ``./``, no empty segments, no trailing slash ("" = the root)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("a path may not climb out with '..'")
    return "/".join(parts)


def is_glob(pattern: str) -> bool:
    return _WILD.search(pattern) is not None


def _segments(path: str) -> list[str]:
    return path.split("/") if path else []


def static_prefix(pattern: str) -> str:
    """The directory a glob's matches all lie under (what it fixes before its first wildcard)."""
    fixed: list[str] = []
    for segment in _segments(pattern):
        if is_glob(segment):
            break
        fixed.append(segment)
    return "/".join(fixed)


def _within(path: str, directory: str) -> bool:
    """`path` is `directory` or lies under it ("" is the root)."""
    return directory == "" or path == directory or path.startswith(directory + "/")


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def matches(pattern: str, path: str) -> bool:
    """Whether `path` (a file) falls under `pattern`."""
    if not is_glob(pattern):
        return _within(path, pattern)
    return _regex(pattern).fullmatch(path) is not None


def overlaps(a: str, b: str) -> bool:
    """Whether some file could be matched by both patterns (see the module docstring)."""
    glob_a, glob_b = is_glob(a), is_glob(b)
    if not glob_a and not glob_b:
        return _within(a, b) or _within(b, a)
    if glob_a and glob_b:
        prefix_a, prefix_b = static_prefix(a), static_prefix(b)
        return _within(prefix_a, prefix_b) or _within(prefix_b, prefix_a)
    glob, literal = (a, b) if glob_a else (b, a)
    if matches(glob, literal):
        return True
    # `literal` as a directory: could a file under it match the glob? The glob must reach
    # below `literal` (`**`, or more segments), from a prefix on the same branch.
    deeper = "**" in glob or len(_segments(glob)) > len(_segments(literal))
    prefix = static_prefix(glob)
    return deeper and (_within(literal, prefix) or _within(prefix, literal))
