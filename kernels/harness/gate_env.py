"""The regression gate's surroundings: a checkout and a Python environment per commit,
and a meter of the CPU time other processes take (:mod:`kernels.harness.gate`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path


class GateError(RuntimeError):
    """The gate could not run (no checkout, no environment, a worker that died)."""


# ---------------------------------------------------------------------------
# Checkouts and environments
# ---------------------------------------------------------------------------


def _git(repo: Path, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise GateError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def checkout(repo: Path, slot: Path, commit: str) -> Path:
    """A detached worktree of ``commit`` at ``slot``, made once and moved between commits.

    Moving the same worktree (rather than one per commit) rewrites only the files that
    differ, so the unchanged ones keep their times and numba's cache stays valid.
    """
    if (slot / ".git").exists():
        _git(slot, "checkout", "--quiet", "--detach", "--force", commit)
        _git(slot, "clean", "-fdq")
    else:
        _git(repo, "worktree", "prune")
        slot.parent.mkdir(parents=True, exist_ok=True)
        if slot.exists():
            shutil.rmtree(slot)
        _git(repo, "worktree", "add", "--quiet", "--detach", str(slot), commit)
    return slot


def requirements(root: Path) -> list[str]:
    """The commit's runtime requirements (``[project].dependencies`` of its pyproject)."""
    path = root / "pyproject.toml"
    if not path.exists():
        return []
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"{path}: {exc}") from None
    return sorted(project.get("dependencies", []))


def satisfied_here(reqs: list[str]) -> bool:
    """Whether this interpreter already has every requirement, at an accepted version."""
    try:
        from importlib import metadata

        from packaging.requirements import Requirement
    except ImportError:
        return not reqs
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(version, prereleases=True):
            return False
    return True


def environment(reqs: list[str], envs_dir: Path, log: Callable[[str], None]) -> str:
    """The Python to run a commit with: this one if it fits, else a venv per requirement set."""
    if satisfied_here(reqs):
        return sys.executable
    key = hashlib.sha256("\n".join([sys.version, *reqs]).encode()).hexdigest()[:12]
    env = envs_dir / f"env-{key}"
    python = env / "bin" / "python"
    if (env / ".complete").exists():
        return str(python)
    log(f"gate: building an environment for {', '.join(reqs)} in {env} (once per "
        "requirement set)")
    shutil.rmtree(env, ignore_errors=True)
    started = time.monotonic()
    for cmd in ([sys.executable, "-m", "venv", str(env)],
                [str(python), "-m", "pip", "install", "--quiet", *reqs]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            raise GateError(f"{' '.join(cmd[:4])} ... failed:\n{out.stderr[-2000:]}")
    (env / ".complete").write_text("\n".join(reqs) + "\n")
    log(f"gate: environment built in {time.monotonic() - started:.0f} s")
    return str(python)


# ---------------------------------------------------------------------------
# CPU time of others
# ---------------------------------------------------------------------------


def _proc_stat_jiffies() -> tuple[int, int]:
    """(all cores' busy + steal jiffies, all cores' total jiffies) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _proc_table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Every process's children, and its utime + stime (jiffies), from /proc."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2:].split()
        pid = int(entry)
        children.setdefault(int(rest[1]), []).append(pid)
        times[pid] = int(rest[11]) + int(rest[12])
    return children, times


def tree_pids(root_pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root_pid`` and every process descended from it (a pool's workers, a forkserver's)."""
    if children is None:
        children = _proc_table()[0]
    pids, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def _tree_jiffies(root_pid: int) -> int:
    """utime + stime of ``root_pid`` and every process descended from it."""
    children, times = _proc_table()
    return sum(times.get(pid, 0) for pid in tree_pids(root_pid, children))


def pin_tree(root_pids: list[int], cpus: set[int]) -> bool:
    """Every thread of ``root_pids`` and their descendants on ``cpus`` (Linux); False
    where affinity cannot be set here. A thread that ends meanwhile is passed over;
    threads started later inherit their creator's affinity."""
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return False
    children = _proc_table()[0]
    for root in root_pids:
        for pid in tree_pids(root, children):
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                continue
            for tid in tids:
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError:
                    pass
    return True


class CpuMeter:
    """The share of all cores' time that processes other than the gate's used."""

    def __init__(self) -> None:
        self.available = os.path.exists("/proc/stat")
        self._start: tuple[int, int, int] | None = None

    def start(self) -> None:
        if self.available:
            busy, total = _proc_stat_jiffies()
            self._start = (busy, total, _tree_jiffies(os.getpid()))

    def other_share(self) -> float:
        """Since :meth:`start`; 0.0 where /proc is absent."""
        if not self.available or self._start is None:
            return 0.0
        busy, total = _proc_stat_jiffies()
        own = _tree_jiffies(os.getpid())
        b0, t0, o0 = self._start
        if total <= t0:
            return 0.0
        return max(0, (busy - b0) - (own - o0)) / (total - t0)


