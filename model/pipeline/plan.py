"""The report's plan: how many photos, steps, stages and channels each section gets, chosen so
that the estimated time fits a budget, by one rule.

The rule (:func:`fit_plan`): every count the plan chooses (:class:`Count`: the explorer's and
the evaluation's photos, the randomization check's photos and stages, the class models'
steps, Score-CAM's channels, the test images a scan reads) lies between a minimum, which still
makes the section's figures readable, and the full value, which the report runs without a
budget. All counts move together: at share s in [0, 1] each count is
``minimum * (full / minimum) ** s`` (the same share of the way on a log scale, so that a count
from 1 to 16 and one from 256 to 3925 both reach their middle at s = 1/2), rounded down and
never below its minimum; s = 1 is the full run. The plan takes the largest s of a fixed grid
(:data:`SHARES`) whose estimated total fits the budget. So:

- a count never falls when the budget grows (the estimate rises with every count, so the
  largest s that fits can only grow, and every count rises with s);
- no section is dropped: every count keeps its minimum, even when the minimum plan does not
  fit the budget (the plan then says by how much it will run over);
- the estimate is the measured per-unit costs times the counts (``model.pipeline.estimate``).
"""
import math
from dataclasses import dataclass, field

SHARES = tuple(step / 64 for step in range(65))  # the shares the rule chooses among, 0 to 1


@dataclass(frozen=True)
class Count:
    """One number the plan chooses, with the range it may take.

    Attributes:
        name: what it counts, as the plan prints it (``evaluation photos``).
        minimum: the least the section is run with; full: what the full run uses.
        flag: the command-line flag that sets it, for the page's "the full run" advice.
    """

    name: str
    minimum: int
    full: int
    flag: str = ""

    def at(self, share):
        """The count at ``share`` of the way from minimum to full (log scale), an int."""
        low, high = min(self.minimum, self.full), self.full
        if share >= 1 or low == high:
            return high
        value = math.floor(low * (high / low) ** share + 1e-9)
        return max(low, min(high, value))


@dataclass
class Plan:
    """The counts chosen and what they are estimated to cost.

    Attributes:
        share: the share of the rule (1: the full run).
        counts: count name -> the value chosen.
        seconds: section -> estimated seconds with those counts.
        budget: the budget in seconds (None: the full run, no budget).
        reduced: count name -> (chosen, full) for every count below its full value.
    """

    share: float
    counts: dict
    seconds: dict
    budget: float = None
    reduced: dict = field(default_factory=dict)

    @property
    def total(self):
        return sum(self.seconds.values())

    @property
    def full(self):
        return not self.reduced


def counts_at(counts, share):
    """Every :class:`Count` at ``share``: name -> value."""
    return {count.name: count.at(share) for count in counts}


def fit_plan(counts, estimate, budget):
    """The plan with the largest share of :data:`SHARES` whose estimate fits ``budget``.

    Args:
        counts: the :class:`Count` s to choose.
        estimate: function(name -> value) -> {section: seconds}, rising with every count.
        budget: seconds, or None for the full run.

    Returns:
        a :class:`Plan`; its total exceeds ``budget`` only where the minimum plan does.
    """
    chosen = SHARES[0]
    if budget is None:
        chosen = 1.0
    else:
        for share in SHARES:  # a handful of cheap estimates: no bisection needed
            if sum(estimate(counts_at(counts, share)).values()) <= budget:
                chosen = share
    values = counts_at(counts, chosen)
    reduced = {count.name: (values[count.name], count.full) for count in counts
               if values[count.name] < count.full}
    return Plan(chosen, values, estimate(values), budget, reduced)
