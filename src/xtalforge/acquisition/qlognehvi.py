"""qLogNEHVI: batch log noisy expected hypervolume improvement (BoTorch), for several objectives,
sequential-greedy over the (smaller) multi-objective shortlist."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from xtalforge.acquisition.base import AcquisitionArm, Round


class QLogNEHVI(AcquisitionArm):
    """BoTorch's qLogNEHVI with the reference point just below the baseline's worst posterior
    mean per objective; pending points and earlier picks enter as X_pending."""

    name = "qlognehvi"
    single_objective = False
    multi_objective = True

    def pick(self, rd: Round, n: int, taken: Sequence[int],
             rng: np.random.Generator) -> tuple[list[int], list[float]]:
        import torch
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
        from botorch.sampling import SobolQMCNormalSampler

        sur = rd.surrogate
        dtype = torch.float64
        idx = [sur.index(t.name) for t in rd.objectives]
        signs = torch.tensor([t.sign for t in rd.objectives], dtype=dtype)
        bmean, _ = sur.predict(rd.X_baseline)
        bobj = bmean[:, idx] * signs.numpy()
        span = np.maximum(bobj.max(0) - bobj.min(0), 1e-3)
        ref = torch.as_tensor(bobj.min(0) - 0.1 * span, dtype=dtype)
        Xc = torch.as_tensor(rd.X_candidates, dtype=dtype)
        pend = torch.as_tensor(rd.X_pending, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acqf = qLogNoisyExpectedHypervolumeImprovement(
                model=sur.model, ref_point=ref, X_baseline=torch.as_tensor(rd.X_baseline, dtype=dtype),
                sampler=SobolQMCNormalSampler(torch.Size([self.settings.moo_samples]), seed=rd.seed),
                objective=WeightedMCMultiOutputObjective(signs, outcomes=idx, num_outcomes=len(sur.outcomes)),
                constraints=[(lambda Y, j=j, c=c: c.slack(Y[..., j])) for j, c in rd.constraints] or None,
                X_pending=None, prune_baseline=True, cache_pending=True)
            picked = [int(p) for p in taken]
            avail = [int(p) for p in rd.available(taken)]
            out, vals = [], []
            for _ in range(min(n, len(avail))):
                P = torch.cat([pend, Xc[picked]]) if len(picked) or len(pend) else None
                acqf.set_X_pending(P)
                with torch.no_grad():
                    v = torch.cat([acqf(Xc[avail[i : i + 64]].unsqueeze(-2)) for i in range(0, len(avail), 64)])
                k = int(torch.argmax(v))
                picked.append(avail[k])
                out.append(avail[k])
                vals.append(float(v[k]))
                avail.pop(k)
        return out, vals
