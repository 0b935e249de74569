"""Shared pieces of the asv suite: the worker counts every kernel is raced at.

asv imports this suite from the installed ``kernels`` package (under
``--python=same`` PYTHONPATH is dropped), so everything here imports ``kernels``.
"""

WORKERS = [1, 2]


def skip(reason: str) -> None:
    """Tell asv to skip this parameter combination (asv treats NotImplementedError so)."""
    raise NotImplementedError(reason)
