"""Process-tree helpers for the tests that check no worker outlives its pool (Linux
/proc): whether a pid is alive, and every live process below a pid."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie is gone in all but name)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_by_parent() -> dict[int, list[int]]:
    """Every process's children, by parent pid."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(") ", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` in the process tree."""
    tree = children_by_parent()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
