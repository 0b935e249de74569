"""Paired statistics for the regression gate: one verdict per point from rounds A, B, A, B...

The gate (:mod:`kernels.harness.gate`) times BASE and HEAD in alternation and hands
this module, for every benchmark point, the per-round log ratios
``d_r = ln(HEAD_r / BASE_r)``. A drift of the machine that is slower than a round
multiplies both sides of a round alike and cancels in ``d_r``; pooled samples taken
minutes apart (what ``asv compare`` tests) keep it, which is why the unpaired test
is here too: the tests show on simulated drift that it fires where the paired one
stays quiet.

- :func:`wilcoxon_greater`: exact one-sided Wilcoxon signed-rank p-value, distribution
  free (no normality of the rounds assumed), exact with ties by doubled mid-ranks.
- :func:`hodges_lehmann`: the shift estimate (median of Walsh averages) and its
  distribution-free confidence interval, the one that goes with the signed-rank test.
- :func:`benjamini_hochberg`: adjusted q-values, so that the false alarms over all the
  points judged in one run stay at the chosen level (when no point changed, the false
  discovery rate is the family-wise error rate).
- :func:`mann_whitney_p`: the unpaired two-sided test, for comparison only.
- :func:`two_sample_stats`: the exact unpaired figures for peak memory, which does not
  drift with the machine's speed: every sample comes from a fresh process.
- :func:`judge`: the verdict per point.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Fewest rounds for which a verdict is given: 2**-6 = 0.016 is the smallest one-sided
#: p-value six rounds can reach.
MIN_ROUNDS = 6


def _null_counts(doubled_ranks: Sequence[int]) -> list[int]:
    """Number of sign assignments giving each value of the doubled signed-rank sum."""
    total = sum(doubled_ranks)
    counts = [0] * (total + 1)
    counts[0] = 1
    top = 0
    for r in doubled_ranks:
        for s in range(top, -1, -1):
            if counts[s]:
                counts[s + r] += counts[s]
        top += r
    return counts


def _mid_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of ``values`` with ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_greater(d: Sequence[float]) -> float:
    """One-sided p-value of the signed-rank test that ``d`` is shifted above 0.

    Zeros are dropped (Wilcoxon's convention). Exact: the null distribution is every
    sign assignment of the observed mid-ranks, counted by dynamic programming on
    doubled ranks (integers even with ties). Returns 1.0 for no non-zero difference.
    """
    nz = [x for x in d if x != 0.0]
    if not nz:
        return 1.0
    doubled = [round(2 * r) for r in _mid_ranks([abs(x) for x in nz])]
    w_plus = sum(r for r, x in zip(doubled, nz, strict=True) if x > 0)
    counts = _null_counts(doubled)
    return sum(counts[w_plus:]) / 2 ** len(nz)


def walsh_averages(d: Sequence[float]) -> list[float]:
    """Every (d_i + d_j) / 2 for i <= j, sorted."""
    return sorted((d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d)))


def hodges_lehmann(d: Sequence[float], confidence: float = 0.95
                   ) -> tuple[float, float, float]:
    """The shift estimate of ``d`` and its two-sided confidence interval (lo, est, hi).

    The estimate is the median of the Walsh averages; the interval runs between their
    k-th smallest and k-th largest, k from the exact null distribution of the
    signed-rank statistic (Hollander & Wolfe, ch. 3). With too few values for the
    level asked, the interval is the whole range of the Walsh averages.
    """
    if not d:
        raise ValueError("hodges_lehmann needs at least one value")
    walsh = walsh_averages(d)
    est = statistics.median(walsh)
    n = len(d)
    counts = _null_counts([2 * r for r in range(1, n + 1)])  # doubled, so even indices
    alpha_half = (1 - confidence) / 2
    # k = the largest number of Walsh averages cut from each end with
    # P(W+ <= k - 1) <= alpha / 2.
    k, cum = 0, 0
    for w in range(0, n * (n + 1) // 2 + 1):
        cum += counts[2 * w]
        if cum / 2**n > alpha_half:
            break
        k = w + 1
    if k == 0:
        return walsh[0], est, walsh[-1]
    return walsh[k - 1], est, walsh[len(walsh) - k]


def benjamini_hochberg(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted q-values, in the order of ``p``."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected).

    The unpaired test: it treats every sample of A and B as independent, as comparing
    stored results from two runs does. Here for the tests' comparison with the paired one.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return 1.0
    ranks = _mid_ranks(list(a) + list(b))
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    n = n1 + n2
    ties: dict[float, int] = {}
    for r in ranks:
        ties[r] = ties.get(r, 0) + 1
    tie_term = sum(t**3 - t for t in ties.values()) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12 * ((n + 1) - tie_term)
    if var <= 0:
        return 1.0
    z = (abs(u - mean) - 0.5) / math.sqrt(var)
    return math.erfc(max(z, 0.0) / math.sqrt(2))


def _u_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """Mann-Whitney U of ``b`` over ``a``: pairs with b > a, ties counting a half."""
    return sum(1.0 if y > x else 0.5 if y == x else 0.0 for x in a for y in b)


def exact_u_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided exact p-value that ``b`` is shifted above ``a`` (Mann-Whitney).

    Exact by enumeration: every split of the pooled values into groups of the two sizes
    is equally likely under the null, ties included (C(10, 5) = 252 splits for five
    samples a side). For small samples only: the gate's peak-memory points.
    """
    pooled = list(a) + list(b)
    n, observed = len(a), _u_greater(a, b)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n):
        rest = set(range(len(pooled))) - set(chosen)
        u = _u_greater([pooled[i] for i in chosen], [pooled[i] for i in sorted(rest)])
        hits += u >= observed - 1e-9
        total += 1
    return hits / total


def two_sample_stats(base: Sequence[float], head: Sequence[float],
                     confidence: float = 0.95) -> PointStats:
    """Ratio HEAD / BASE of two independent samples, its interval and exact p-values.

    The ratio is exp of the two-sample Hodges-Lehmann shift (the median of every
    ln(head_j / base_i)); the interval runs between the k-th smallest and k-th largest
    of those differences, k from the exact null distribution of U (Hollander & Wolfe,
    ch. 4). With too few samples for the level asked it is their whole range.
    """
    la, lb = [math.log(x) for x in base], [math.log(y) for y in head]
    diffs = sorted(y - x for x in la for y in lb)
    est = statistics.median(diffs)
    n, m = len(la), len(lb)
    # Null distribution of U without ties: ranks 1..n+m split into the two groups.
    counts: dict[int, int] = {}
    for chosen in itertools.combinations(range(n + m), n):
        u = sum(chosen) - n * (n - 1) // 2  # ranks of group a (from 0), less their least
        counts[u] = counts.get(u, 0) + 1
    total = sum(counts.values())
    k, cum = 0, 0
    for u in range(n * m + 1):
        cum += counts.get(u, 0)
        if cum / total > (1 - confidence) / 2:
            break
        k = u + 1
    lo, hi = (diffs[0], diffs[-1]) if k == 0 else (diffs[k - 1], diffs[len(diffs) - k])
    return PointStats(min(n, m), math.exp(est), math.exp(lo), math.exp(hi),
                      exact_u_greater(base, head), exact_u_greater(head, base))


@dataclass
class PointStats:
    """The paired figures of one point: ratio HEAD / BASE with its interval."""

    rounds: int
    ratio: float  # exp(Hodges-Lehmann shift of the log ratios)
    lo: float  # confidence interval of the ratio
    hi: float
    p_slower: float  # one-sided signed-rank p-values
    p_faster: float
    q_slower: float = 1.0  # after Benjamini-Hochberg over the run's points
    q_faster: float = 1.0


def point_stats(log_ratios: Sequence[float], confidence: float = 0.95) -> PointStats:
    """Ratio, interval and one-sided p-values of one point's per-round log ratios."""
    lo, est, hi = hodges_lehmann(log_ratios, confidence)
    return PointStats(len(log_ratios), math.exp(est), math.exp(lo), math.exp(hi),
                      wilcoxon_greater(log_ratios), wilcoxon_greater([-x for x in log_ratios]))


@dataclass
class Verdict:
    """The gate's answer for one point; ``status`` is one of :data:`STATUSES`."""

    status: str
    stats: PointStats | None = None
    notes: list[str] = field(default_factory=list)


STATUSES = ("regressed", "failed", "improved", "slower", "faster", "unchanged",
            "inconclusive", "unconfirmed", "fixed", "skipped")


def judge(stats: list[PointStats | None], *, factor: float, alpha: float = 0.05
          ) -> list[Verdict]:
    """Verdicts for the points of one run; ``None`` marks a point with too few rounds.

    A point *regressed* when its ratio is beyond ``factor`` and the slowdown is
    significant after Benjamini-Hochberg over all the points judged (q < alpha), which
    puts 1.0 outside the interval the q-value goes with. Significant but within the
    factor is *slower* (or *faster*), reported and not failed; the rest *unchanged*.
    """
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ValueError(f"factor must be a finite number >= 1.0, got {factor}")
    judged = [s for s in stats if s is not None]
    for s, q in zip(judged, benjamini_hochberg([s.p_slower for s in judged]), strict=True):
        s.q_slower = q
    for s, q in zip(judged, benjamini_hochberg([s.p_faster for s in judged]), strict=True):
        s.q_faster = q
    verdicts = []
    for s in stats:
        if s is None:
            verdicts.append(Verdict("inconclusive"))
        elif s.q_slower < alpha:
            verdicts.append(Verdict("regressed" if s.ratio > factor else "slower", s))
        elif s.q_faster < alpha:
            verdicts.append(Verdict("improved" if s.ratio < 1 / factor else "faster", s))
        else:
            verdicts.append(Verdict("unchanged", s))
    return verdicts
