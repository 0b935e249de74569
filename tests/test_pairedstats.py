"""The gate's statistics on synthetic data: drift as a random walk multiplying both sides.

A machine whose speed drifts by tens of percent within minutes is simulated as a
random walk in log speed. Measured in alternation, both sides of a round see the same
speed, so the paired verdict stays quiet; measured one after the other (as stored
results of two runs are), the same data makes the unpaired test fire. A real 10%
shift on one side is flagged by the paired verdict.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from kernels.harness import pairedstats as ps


def _exact_wilcoxon_greater(d):
    """Brute force over every sign assignment (small n, no ties)."""
    ranks = sorted(range(len(d)), key=lambda i: abs(d[i]))
    rank = {i: r + 1 for r, i in enumerate(ranks)}
    w = sum(rank[i] for i in range(len(d)) if d[i] > 0)
    count = sum(1 for signs in itertools.product((0, 1), repeat=len(d))
                if sum(rank[i] for i in range(len(d)) if signs[i]) >= w)
    return count / 2 ** len(d)


def test_wilcoxon_matches_brute_force():
    rng = random.Random(1)
    for n in range(1, 11):
        d = [rng.gauss(0.2, 1) for _ in range(n)]
        assert ps.wilcoxon_greater(d) == pytest.approx(_exact_wilcoxon_greater(d))


def test_wilcoxon_extremes_and_ties():
    assert ps.wilcoxon_greater([0.1] * 10) == pytest.approx(2**-10)
    assert ps.wilcoxon_greater([-0.1] * 10) == pytest.approx(1.0)
    assert ps.wilcoxon_greater([0.0, 0.0]) == 1.0
    # ties share mid-ranks and the null distribution is still exact: symmetric data
    p_up = ps.wilcoxon_greater([1, 1, -1, -1, 2, -2])
    p_down = ps.wilcoxon_greater([-1, -1, 1, 1, -2, 2])
    assert p_up == pytest.approx(p_down) and 0.4 < p_up < 0.8


def test_hodges_lehmann_interval_has_its_coverage():
    """95% intervals on 12 rounds of a known shift cover it about 95% of the time."""
    rng = random.Random(2)
    cover = 0
    trials = 400
    for _ in range(trials):
        d = [0.05 + rng.gauss(0, 0.03) for _ in range(12)]
        lo, est, hi = ps.hodges_lehmann(d)
        assert lo <= est <= hi
        cover += lo <= 0.05 <= hi
    assert 0.90 <= cover / trials <= 0.99


def test_hodges_lehmann_critical_value_for_ten():
    # n = 10: P(W+ <= 8) = 0.0244 <= 0.025 < P(W+ <= 9), so 9 Walsh averages are cut
    # from each end (Hollander & Wolfe's table).
    d = list(range(1, 11))
    walsh = ps.walsh_averages(d)
    assert ps.hodges_lehmann(d) == (walsh[8], 5.5, walsh[-9])


def test_benjamini_hochberg():
    assert ps.benjamini_hochberg([0.01, 0.04, 0.03, 0.5]) == pytest.approx(
        [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert ps.benjamini_hochberg([]) == []


def _drifting_machine(rng, rounds, shift=0.0, noise=0.02, step=0.08):
    """(base, head) times per round, in alternation and one run after the other.

    Log speed is a random walk (``step`` per round: tens of percent over a run).
    Paired: both sides of round r see the same speed. Unpaired: BASE's run takes the
    first ``rounds`` steps of the walk and HEAD's the next ``rounds``.
    """
    walk = [0.0]
    for _ in range(2 * rounds):
        walk.append(walk[-1] + rng.gauss(0, step))
    paired = [(math.exp(walk[r] + rng.gauss(0, noise)),
               math.exp(walk[r] + shift + rng.gauss(0, noise))) for r in range(rounds)]
    base_run = [math.exp(walk[r] + rng.gauss(0, noise)) for r in range(rounds)]
    head_run = [math.exp(walk[rounds + r] + shift + rng.gauss(0, noise))
                for r in range(rounds)]
    return paired, base_run, head_run


def _paired_verdicts(rng, points, rounds, shift):
    stats, unpaired_fired = [], 0
    for _ in range(points):
        paired, base_run, head_run = _drifting_machine(rng, rounds, shift)
        stats.append(ps.point_stats([math.log(h / a) for a, h in paired]))
        ratio = sorted(head_run)[rounds // 2] / sorted(base_run)[rounds // 2]
        unpaired_fired += ratio > 1.10 and ps.mann_whitney_p(base_run, head_run) < 0.002
    return ps.judge(stats, factor=1.10), unpaired_fired


def test_drift_alone_fires_the_unpaired_test_not_the_paired_one():
    rng = random.Random(3)
    false_paired = 0
    fired_unpaired = 0
    for _ in range(20):  # 20 runs of 32 identical points each
        verdicts, unpaired = _paired_verdicts(rng, 32, 12, shift=0.0)
        false_paired += any(v.status in ("regressed", "failed") for v in verdicts)
        fired_unpaired += unpaired > 0
    assert false_paired <= 1  # at most one run of 20 (the level is 0.05 per run)
    assert fired_unpaired >= 15  # asv's unpaired test calls most of these runs regressed


def test_a_ten_percent_shift_on_one_side_is_flagged():
    rng = random.Random(4)
    stats = []
    for i in range(32):
        paired, _, _ = _drifting_machine(rng, 12, shift=math.log(1.15) if i < 8 else 0.0)
        stats.append(ps.point_stats([math.log(h / a) for a, h in paired]))
    verdicts = ps.judge(stats, factor=1.10)
    assert [v.status for v in verdicts[:8]] == ["regressed"] * 8
    assert all(v.status in ("unchanged", "slower", "faster") for v in verdicts[8:])
    for v in verdicts[:8]:  # the interval holds the true 1.15 and excludes 1
        assert 1.0 < v.stats.lo and v.stats.lo < 1.15 * 1.03 and v.stats.hi > 1.15 / 1.03


def test_judge_needs_factor_and_significance():
    many = [0.2 + 0.001 * i for i in range(12)]  # 1.22x, every round slower
    tiny = [0.03 + 0.001 * i for i in range(12)]  # 1.04x, every round slower
    verdicts = ps.judge([ps.point_stats(many), ps.point_stats(tiny), None], factor=1.10)
    assert [v.status for v in verdicts] == ["regressed", "slower", "inconclusive"]
    noisy = [0.3, -0.25, 0.2, -0.2, 0.25, -0.3, 0.2, -0.1, 0.3, -0.2, 0.25, 0.1]
    assert ps.judge([ps.point_stats(noisy)], factor=1.10)[0].status == "unchanged"
    for bad in (float("nan"), float("inf"), 0.9):
        with pytest.raises(ValueError, match="factor"):
            ps.judge([], factor=bad)


def test_mann_whitney():
    assert ps.mann_whitney_p([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) > 0.9
    assert ps.mann_whitney_p(list(range(20)), list(range(100, 120))) < 1e-6


def test_exact_u_test_counts_the_splits():
    # Every BASE sample below every HEAD one: 1 of the C(10, 5) = 252 splits.
    assert ps.exact_u_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / 252)
    assert ps.exact_u_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == 1.0
    # All tied: every split gives the same U, so nothing is shifted.
    assert ps.exact_u_greater([3, 3, 3], [3, 3, 3]) == 1.0
    # Against a brute force on random data with ties (small groups).
    rng = random.Random(5)
    for _ in range(20):
        a = [rng.choice([1, 2, 3, 4]) for _ in range(4)]
        b = [rng.choice([1, 2, 3, 4, 5]) for _ in range(3)]
        pooled = a + b

        def u(x, y):
            return sum((yy > xx) + 0.5 * (yy == xx) for xx in x for yy in y)

        splits = [([pooled[i] for i in c],
                   [pooled[i] for i in range(len(pooled)) if i not in c])
                  for c in itertools.combinations(range(len(pooled)), len(a))]
        brute = sum(u(x, y) >= u(a, b) for x, y in splits) / len(splits)
        assert ps.exact_u_greater(a, b) == pytest.approx(brute)


def test_two_sample_stats_for_peak_memory():
    base = [100.0, 101.0, 100.5, 99.8, 100.2]
    head = [115.0, 116.0, 114.8, 115.5, 115.1]
    s = ps.two_sample_stats(base, head)
    assert s.rounds == 5 and 1.13 < s.lo < s.ratio < s.hi < 1.16
    assert s.p_slower == pytest.approx(1 / 252) and s.p_faster == 1.0
    same = ps.two_sample_stats(base, list(base))
    assert same.ratio == pytest.approx(1.0) and same.lo < 1.0 < same.hi
    assert same.p_slower > 0.5
    # The 95% interval of 5 + 5 is the 3rd to the 23rd of the 25 differences (the
    # exact U distribution: P(U <= 2) = 4/252 <= 0.025 < P(U <= 3) = 7/252).
    diffs = sorted(math.log(h / b) for b in base for h in head)
    assert math.log(s.lo) == pytest.approx(diffs[2])
    assert math.log(s.hi) == pytest.approx(diffs[22])
    # Five a side is enough for a single regressed point among 12 after correction.
    assert ps.benjamini_hochberg([s.p_slower] + [1.0] * 11)[0] < 0.05
