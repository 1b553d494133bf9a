"""Acquisition: which pool candidates the expensive oracles evaluate next.

`Acquirer` (portfolio.py) runs one round: it screens the pool down to a shortlist (screen.py),
draws joint posterior samples once (draws.py), and lets each configured arm pick its share of
the batch; with several arms it is a GP-Hedge portfolio that learns which arm to trust. Each
acquisition function is one class in its own module (qlognei.py, ucb.py, thompson.py,
random.py, qlognehvi.py), known to configs through one registry (registry.py).

Adding an acquisition function
------------------------------
Write one `AcquisitionArm` subclass, in your own module, and register it once::

    import numpy as np
    from xtalforge.acquisition import AcquisitionArm, Round, register_arm

    class BestMean(AcquisitionArm):
        \"\"\"Exploit only: the shortlisted candidates with the best posterior mean.\"\"\"

        name = "best_mean"        # what a config names: acquisition.kind / acquisition.portfolio
        needs_draws = False       # True: read rd.draws / rd.objective_draws / rd.feasible
        single_objective = True   # serves one objective ...
        multi_objective = False   # ... and not several

        def pick(self, rd: Round, n, taken, rng):
            free = rd.available(taken)                 # shortlist positions still free
            t = rd.objectives[0]                       # t.sign: +1 maximize, -1 minimize
            mean, _ = rd.surrogate.predict(rd.X_candidates[free])
            order = np.argsort(-t.sign * mean[:, rd.surrogate.index(t.name)])[:n]
            return free[order].tolist(), [0.0] * len(order)   # positions, one value each

    register_arm(BestMean)

`pick` returns up to `n` shortlist positions (rows of `rd.X_candidates`) not in `taken`, plus one
value per pick (logged). Positions in `taken` (and the rows of `rd.X_pending`) are already in
this round's batch. `rd.surrogate` is a `model.base.SurrogateModel`; `rd.objectives`,
`rd.constraints` (modeled, with their outcome column) and `rd.seed` say what the round wants.
Arms with `needs_draws = True` get `rd.draws` (S joint posterior draws over [baseline | pending |
shortlist] columns, `rd.column(position)` converts) and, for one objective, `rd.objective_draws`
(maximization sense), `rd.feasible` and `rd.incumbent`. An arm with `needs_model = False` that
runs alone is handed the whole pool instead of the shortlist. Import the module before the
config is read (e.g. in the script that starts the campaign); `acquisition: {kind: best_mean}`
then validates and runs. Registering a name again replaces the earlier class.
"""

from xtalforge.acquisition.base import (AcquisitionArm, AcquisitionError, ArmSettings, Constraint, Picks, Round,
                                        Target)
from xtalforge.acquisition.pool import farthest_point, pool_matrix
from xtalforge.acquisition.portfolio import Acquirer
from xtalforge.acquisition.registry import UnknownArm, arm_names, get_arm, register_arm

__all__ = ["Acquirer", "AcquisitionArm", "AcquisitionError", "ArmSettings", "Constraint", "Picks", "Round",
           "Target", "UnknownArm", "arm_names", "farthest_point", "get_arm", "pool_matrix", "register_arm"]
