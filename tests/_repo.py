"""Helpers for the tests that build a tiny git repository and run asv or the gate on it
(``test_asvrun.py``, ``test_compare.py``, ``test_gate.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def git(root: Path, *args: str) -> str:
    """``git args`` in ``root`` with a throwaway identity; its output, stripped."""
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                          *args], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def asv_env(home: Path) -> dict[str, str]:
    """The environment for an asv process: ``home`` as HOME (asv's machine file goes
    there, not to the user's), this Python's scripts first on PATH, and no PYTHONPATH
    (the project's benchmarks import what the environment has)."""
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    return env
