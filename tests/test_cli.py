"""The ``kernelrace`` command, run as users run it: ``python -m kernels ...`` subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import executors, registry, sieve
from kernels.harness import cli

REPO = Path(__file__).resolve().parents[1]


def kernelrace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kernels", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    executors.shutdown_pools()


# ---------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------


def test_list_shows_every_kernel_and_strategy_with_availability() -> None:
    out = kernelrace("list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["kernel", "strategy", "inner", "available"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:] if line.strip()}
    for kernel in registry.KERNELS:
        for info in registry.strategies(kernel):
            row = rows.get((kernel, info.name))
            assert row is not None, f"{kernel} {info.name} missing from kernelrace list"
            assert row[2] == (",".join(info.inners) or "-")
            assert row[3] == ("yes" if info.available else "no")


def test_list_one_kernel() -> None:
    out = kernelrace("list", "--kernel", "sieve")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[1] for line in out.stdout.splitlines()[2:] if line.startswith("sieve")]
    assert listed == list(sieve.STRATEGIES)
    assert "montecarlo" not in out.stdout


def test_list_says_why_a_strategy_is_unavailable(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "primesieve", None)  # as if the extra were absent
    assert cli.main(["list", "--kernel", "sieve"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if " primesieve " in line)
    assert row.split()[3] == "no"
    assert "primesieve is not installed" in row and "pip install" in row


# ---------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------


def test_verify_sieve_passes_and_prints_a_table() -> None:
    out = kernelrace("verify", "--kernel", "sieve", timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["kernel", "strategy", "workers", "checks", "result", "detail"]
    rows = [line.split() for line in lines[2:] if line.startswith("sieve ")]
    # One row per available (strategy, inner) and worker count 1, 2.
    assert len(rows) == 2 * len(registry.variants("sieve"))
    assert all(row[4] == "ok" for row in rows)
    assert {row[1] for row in rows} == {registry.label(s, i) for s, i in registry.variants("sieve")}
    assert lines[-1] == f"{len(rows)} passed, 0 failed"
    assert "MISMATCH" not in out.stdout


def test_verify_exits_one_on_a_mismatch(monkeypatch, capsys) -> None:
    # Break the NumPy chunk kernel in this process only: the numpy strategy calls it
    # directly, so its checks fail; the others are untouched.
    real = sieve.vectorized.count_range
    monkeypatch.setattr(sieve.vectorized, "count_range", lambda *a, **k: real(*a, **k) + 1)
    monkeypatch.setattr(
        registry, "variants", lambda kernel, **kw: [("numpy", None), ("numba", None)]
    )
    assert cli.main(["verify", "--kernel", "sieve"]) == 1
    out = capsys.readouterr().out
    rows = {(r.split()[1], r.split()[2]): r for r in out.splitlines() if r.startswith("sieve ")}
    assert "MISMATCH" in rows[("numpy", "1")] and "MISMATCH" in rows[("numpy", "2")]
    assert "expected" in rows[("numpy", "1")]
    assert rows[("numba", "1")].split()[4] == "ok"
    assert "2 passed, 2 failed" in out


def test_verify_reports_a_crash_as_a_failure(monkeypatch, capsys) -> None:
    def boom(*args, **kwargs):
        raise ZeroDivisionError("kernel crashed")

    monkeypatch.setattr(sieve.vectorized, "count_range", boom)
    monkeypatch.setattr(registry, "variants", lambda kernel, **kw: [("numpy", None)])
    assert cli.main(["verify", "--kernel", "sieve"]) == 1
    assert "ZeroDivisionError: kernel crashed" in capsys.readouterr().out


def test_verify_asks_what_is_available_before_it_runs_anything(monkeypatch, capsys) -> None:
    """Asking loads torch, which must come before numba's first parallel kernel starts
    OpenMP threads: else torch would run on numba's libgomp, and the attention module
    warns (in the middle of `make bench`'s verify)."""
    log = []
    real = registry.strategies

    def strategies(kernel, *a, **k):
        log.append(("available?", kernel))
        return real(kernel, *a, **k)

    monkeypatch.setattr(registry, "strategies", strategies)
    monkeypatch.setattr(registry, "variants", lambda kernel, **kw: [("numpy", None)])
    for kernel in registry.kernel_names():
        module = registry.kernel_module(kernel)
        monkeypatch.setattr(module, "verify",
                            lambda s, i, w, kernel=kernel: log.append(("verify", kernel)) or [])
    assert cli.main(["verify"]) == 0
    first = log.index(next(e for e in log if e[0] == "verify"))
    asked = {k for what, k in log[:first] if what == "available?"}
    assert asked == set(registry.kernel_names())


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------

RUN_FIELDS = {
    "kernel", "strategy", "inner", "size", "workers",
    "median_s", "min_s", "max_s", "repeat", "speedup",
}  # fmt: skip


def test_run_json_rows() -> None:
    out = kernelrace(
        "run", "--kernel", "sieve", "--strategy", "numba", "--strategy", "numpy",
        "--size", "1e5", "--workers", "1", "--repeat", "2", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # progress goes to stderr, so stdout is only JSON
    assert isinstance(rows, list) and len(rows) == 2
    assert [r["strategy"] for r in rows] == ["numba", "numpy"]
    for r in rows:
        assert RUN_FIELDS <= set(r), RUN_FIELDS - set(r)
        assert r["kernel"] == "sieve" and r["inner"] is None
        assert (r["size"], r["workers"], r["repeat"]) == (10**5, 1, 2)
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["count"] == 9592 and r["correct"] is True
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert rows[1]["speedup"] == pytest.approx(rows[0]["median_s"] / rows[1]["median_s"])


def test_run_table_in_process(capsys) -> None:
    argv = "run --kernel sieve --strategy threaded:numba --size 1000 --workers 2 --repeat 1"
    assert cli.main(argv.split()) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == [
        "strategy", "size", "workers", "median", "min..max", "speedup",
    ]  # fmt: skip
    assert "threaded:numba" in out and "1.00x" in out
    assert "median of 1 runs after 1 warm-up" in out


# ---------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------


def test_unknown_kernel_names_the_choices() -> None:
    out = kernelrace("run", "--kernel", "fft", "--size", "10")
    assert out.returncode != 0
    assert "fft" in out.stderr
    for kernel in registry.KERNELS:
        assert kernel in out.stderr


def test_unknown_strategy_names_the_choices() -> None:
    out = kernelrace("run", "--kernel", "sieve", "--strategy", "cuda", "--size", "10")
    assert out.returncode != 0
    assert "strategy must be one of" in out.stderr and "'cuda'" in out.stderr
    for name in sieve.STRATEGIES:
        assert name in out.stderr
    assert out.stdout == ""  # refused before anything ran


def test_unknown_inner_names_the_choices() -> None:
    out = kernelrace("run", "--kernel", "sieve", "--strategy", "threaded:rust", "--size", "10")
    assert out.returncode != 0
    assert "inner must be one of python, numpy, numba" in out.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("run --kernel sieve --strategy numba --size -5", "--size"),
        ("run --kernel sieve --strategy numba --size ten", "--size"),
        ("run --kernel sieve --strategy numba --workers 0 --size 10", "workers"),
        ("run --kernel sieve --strategy pipeline --size 100000 --repeat 1", "pipeline"),
        ("run --kernel sieve --strategy numpy --workers 2 --size 10", "workers"),
        ("verify --kernel nope", "sieve"),
        ("frobnicate", "list"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(argv: str, message: str, capsys) -> None:
    try:
        code = cli.main(argv.split())
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    assert code not in (0, None)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Strict numbers, the grid checked first, finished points kept (issue 16, item 8)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        ("run --kernel sieve --size 1.9e0", "--size"),
        ("run --kernel sieve --size 1e-3", "--size"),
        ("run --kernel sieve --size 1e400", "--size"),
        ("run --kernel sieve --size inf", "--size"),
        ("run --kernel sieve --size 1e999999999", "--size"),
        ("run --kernel sieve --size 10 --repeat 0", "--repeat"),
        ("run --kernel sieve --size 10 --warmup -3", "--warmup"),
        ("run --kernel sieve --size 10 --workers 1e6", "--workers"),
        ("run --kernel sieve --size 10 --workers 2.5", "--workers"),
        ("run --kernel attention --size 10 --seed -1", "--seed"),
        ("run --kernel attention --size 10 --batch 0", "--batch"),
        ("machine --array-bytes infG", "--array-bytes"),
        ("machine --array-bytes 1e400G", "--array-bytes"),
        ("machine --repeats 0", "--repeats"),
    ],
)
def test_numbers_parse_strictly_and_errors_name_the_flag(argv: str, flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv.split())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err
    assert "expected" in err  # says what it takes


def test_exact_whole_numbers_in_any_notation_are_accepted() -> None:
    args = cli.build_parser().parse_args(
        "run --kernel sieve --size 1e3 --size 1_000 --size 2.0 --workers 2e0".split())
    assert args.size == [1000, 1000, 2] and args.workers == [2]


def test_the_grid_flags_take_lists_separated_by_commas_too(capsys) -> None:
    args = cli.build_parser().parse_args(
        "run --kernel sieve --size 1e3,2e3 --size 5 --workers 1,2 "
        "--strategy numba,threaded:numba --strategy numpy".split())
    assert args.size == [1000, 2000, 5] and args.workers == [1, 2]
    assert args.strategy == ["numba", "threaded:numba", "numpy"]
    for argv, message in (("--workers 1,,2", "an empty item"),
                          ("--workers 1,x", "expected a whole number"),
                          ("--size 10,", "an empty item")):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["run", "--kernel", "sieve", *argv.split()])
        assert message in capsys.readouterr().err


def test_every_point_is_checked_before_the_first_is_timed(monkeypatch, capsys) -> None:
    from kernels.harness import runner

    timed = []
    real = runner.run_point
    monkeypatch.setattr(runner, "run_point", lambda *a, **k: timed.append(a) or real(*a, **k))
    argv = "run --kernel sieve --strategy pipeline --size 1e3 --size 1e9 --json --repeat 1"
    assert cli.main(argv.split()) == 2
    captured = capsys.readouterr()
    assert timed == [] and captured.out == ""
    assert "pipeline size=1000000000 workers=1" in captured.err
    assert "n must be <= 10000" in captured.err


@pytest.mark.parametrize("as_json", [True, False])
def test_a_later_failure_keeps_the_finished_points(monkeypatch, capsys, as_json) -> None:
    real = sieve.count_primes

    def fails_at_2000(n, **kwargs):
        if n == 2000:
            raise RuntimeError("the kernel broke")
        return real(n, **kwargs)

    monkeypatch.setattr(sieve, "count_primes", fails_at_2000)
    argv = ("run --kernel sieve --strategy numpy --size 1000 --size 2000 --size 3000 "
            "--repeat 1 --warmup 0" + (" --json" if as_json else ""))
    assert cli.main(argv.split()) == 2
    captured = capsys.readouterr()
    assert "error at point 2 of 3 (numpy size=2000 workers=1)" in captured.err
    assert "the kernel broke" in captured.err
    if as_json:
        rows = json.loads(captured.out)
        assert len(rows) == 2
        assert rows[0]["size"] == 1000 and rows[0]["count"] == 168 and "error" not in rows[0]
        assert rows[1]["size"] == 2000 and rows[1]["error"] == "RuntimeError: the kernel broke"
        assert "median_s" not in rows[1]
    else:
        lines = captured.out.splitlines()
        assert any(line.split()[:2] == ["numpy", "1000"] for line in lines)
        assert any(line.split()[:4] == ["numpy", "2000", "1", "failed"] for line in lines)
