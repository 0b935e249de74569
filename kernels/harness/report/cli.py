"""``kernelrace report``: its options, and writing the page and its plots all or nothing
(a staging folder swapped in by renames; leftovers of runs that died are removed)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from kernels.harness.asvresults import ResultsError
from kernels.harness.report.build import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelrace report``."""
    parser.add_argument("--results", default="results/asv",
                        help="asv results folder (default results/asv)")
    parser.add_argument("--machine", default=None,
                        help="machine calibration JSON (default results/machine.json; "
                        "missing is allowed for the default, an error when given)")
    parser.add_argument("--out", default="results",
                        help="folder for report.md and plots/ (default results)")
    parser.add_argument("--asv-machine", default=None,
                        help="asv machine name (default: the machine of the latest run)")
    parser.add_argument("--commit", default=None,
                        help="commit hash prefix to report (default: the latest run)")


# Staging folders and set-aside plot folders carry the writer's pid, so a later run
# removes those of a run that died (kill -9) and leaves a live one's alone.
_STAGING_PREFIX = ".report-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out_dir: Path) -> None:
    """Leftovers of runs that died: staging folders, temp report.md, temp plots."""
    for staging in out_dir.glob(f"{_STAGING_PREFIX}*.tmp"):
        pid = staging.name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
    stale = list(out_dir.glob(".report.md.*.tmp"))
    if (out_dir / "plots").is_dir():
        stale += list((out_dir / "plots").glob(".*.png.*.tmp"))
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()


def _check_out(out_dir: Path, results_dir: Path) -> None:
    if out_dir.resolve() == results_dir.resolve() or results_dir.resolve() in (
            out_dir.resolve().parents):
        raise ResultsError(f"--out {out_dir} is inside the asv results {results_dir}; "
                           "the report never writes there")
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"--out {out_dir} is a file, not a folder")
    for name, kind in (("plots", "a folder"), ("report.md", "a file")):
        path = out_dir / name
        if path.exists() and path.is_dir() != (kind == "a folder"):
            raise ResultsError(f"{path} is in the way: it should be {kind}")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move staging/plots and staging/report.md over out_dir's, as close to at once as
    two renames allow; on an error in between, put the previous plots back.

    Files in the old plots folder that the report does not make (not ``*.png``) are
    carried over; old PNGs go, so no plot of a benchmark that is gone stays behind.
    """
    new_plots, old_plots = staging / "plots", out_dir / "plots"
    new_plots.mkdir(exist_ok=True)
    if old_plots.is_dir():
        for p in old_plots.iterdir():
            keep = not p.name.endswith(".png") and not p.name.endswith(".tmp")
            if keep and not (new_plots / p.name).exists():
                if p.is_dir():
                    shutil.copytree(p, new_plots / p.name)
                else:
                    shutil.copy2(p, new_plots / p.name)
    set_aside = staging / "previous-plots"
    had_plots = old_plots.is_dir()
    if had_plots:
        os.rename(old_plots, set_aside)
    try:
        os.rename(new_plots, old_plots)
    except BaseException:
        if had_plots:
            os.rename(set_aside, old_plots)
        raise
    try:
        os.chmod(staging / "report.md", 0o644)
        os.replace(staging / "report.md", out_dir / "report.md")
    except BaseException:
        os.rename(old_plots, staging / "unused-plots")
        if had_plots:
            os.rename(set_aside, old_plots)
        raise


def run(args: argparse.Namespace) -> int:
    """Write report.md and the plots, all or nothing; 0 on success, 2 when the inputs are
    missing, corrupt or malformed (the previous report and plots are then left whole)."""
    machine_path = Path(args.machine or "results/machine.json")
    out_dir = Path(args.out)
    results_dir = Path(args.results)
    staging: Path | None = None
    try:
        _check_out(out_dir, results_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"--out {out_dir}: cannot create ({exc.strerror or exc})") from None
        _remove_stale(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-",
                                        suffix=".tmp", dir=out_dir))
        try:
            text, plots = build_report(results_dir, machine_path, out_dir,
                                       asv_machine=args.asv_machine, commit=args.commit,
                                       machine_required=args.machine is not None,
                                       plots_dir=staging / "plots")
        except (TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError) as exc:
            # A shape the checks above did not foresee: still an input error, exit 2.
            raise ResultsError(f"malformed input in {results_dir} or {machine_path} "
                               f"({type(exc).__name__}: {exc})") from exc
        (staging / "report.md").write_text(text + "\n", encoding="utf-8")
        _swap_in(staging, out_dir)
    except ResultsError as exc:
        print(f"kernelrace report: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    report = out_dir / "report.md"
    print(f"wrote {report} and {len(plots)} plot(s) in {out_dir / 'plots'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kernels.harness.report``: the same as ``kernelrace report``."""
    from kernels.harness import report

    parser = argparse.ArgumentParser(prog="kernelrace report", description=report.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
