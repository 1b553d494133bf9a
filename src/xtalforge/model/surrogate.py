"""GP surrogates on BoTorch: one GP per outcome (a ModelListGP), inputs normalized, outcomes
standardized, multi-fidelity where one quantity comes from several oracles, bounded refit time.

Cost control. Exact GP hyperparameter fitting costs O(n^3) per L-BFGS step; at n = 2,000 and
80 features one step takes 1-2 s on 2 busy cores, so a cold fit would blow any per-round
budget. So the fit is split: hyperparameters are learned on at most `hyper_subset` points
(warm-started from last round's values, with a wall-clock cap), then the GP is conditioned on at
most `max_exact` points (one Cholesky). Past `max_exact` points the surrogate switches to a
subset-of-data GP: every good point is kept (the region acquisition cares about), the most recent
ones, and an even spread of the rest. `FitReport.kind` says which was used.

Multi-fidelity. When an outcome has values at several fidelities (an MLIP single point = 0, an
MLIP relaxation = 1, a lab = 2 for the same quantity) it is modeled by a MultiTaskGP, one task per
fidelity (an ICM kernel: an RBF over features times a learned fidelity covariance), which predicts
the target fidelity; cheap results then move the prediction
of the expensive ones as far as their learned correlation allows.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from xtalforge.model.base import FitReport, OutcomeData

DTYPE = torch.float64


KERNELS = ("rbf", "rbf+linear")


def _covar_module(kernel: str, dim: int):
    """None (BoTorch's default: RBF with ARD lengthscales and a dimension-scaled prior) for
    "rbf"; for "rbf+linear" that kernel plus a scaled linear kernel on the inputs centred in
    the unit cube: a Bayesian linear read-out of the features that the RBF part corrects,
    which extrapolates a trend past the few points a small training set has."""
    if kernel == "rbf":
        return None
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.priors import GammaPrior

    rbf = get_covar_module_with_dim_scaled_prior(ard_num_dims=dim)
    # variance prior mean 6 / dim: a read-out of dim centred unit-range inputs then has a prior
    # spread of about half the standardized outcome's variance at a typical point
    lin = _centred_linear_kernel()(variance_prior=GammaPrior(2.0, dim / 3.0))
    return rbf + lin


@functools.lru_cache(maxsize=None)
def _centred_linear_kernel():
    from gpytorch.kernels import LinearKernel

    class CentredLinearKernel(LinearKernel):
        """variance * (x - 1/2) . (x' - 1/2): a linear kernel on inputs the Normalize transform
        put in the unit cube, centred so that no direction is favoured by where the cube sits."""

        def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
            return super().forward(x1 - 0.5, x2 - 0.5, diag=diag, **params)

    return CentredLinearKernel


class SurrogateError(ValueError):
    """Training data the surrogate cannot use; the message says which outcome and why."""


def check_training_data(X: np.ndarray, y: np.ndarray, name: str = "target") -> tuple[np.ndarray, np.ndarray]:
    """Drop rows whose features or target are NaN/inf, refusing when nothing usable is left."""
    X, y, _ = _finite_rows(X, y, name)
    return X, y


def _finite_rows(X: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise SurrogateError(f"{name}: features {X.shape} and values {y.shape} do not line up")
    keep = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if keep.sum() == 0:
        why = "no measurements" if len(y) == 0 else f"all {len(y)} values or their features are NaN/inf"
        raise SurrogateError(f"{name}: no usable training points ({why})")
    return X[keep], y[keep], keep


def subset_indices(y: np.ndarray, m: int, rng: np.random.Generator, recent: int = 0,
                   must: np.ndarray | None = None) -> np.ndarray:
    """At most `m` row indices: `must` rows, the best quarter by y (maximized), the `recent`
    last rows, then a random spread of the rest. Deterministic given rng."""
    n = len(y)
    if n <= m:
        return np.arange(n)
    chosen: list[int] = []
    seen = np.zeros(n, dtype=bool)

    def take(idx) -> None:
        for i in idx:
            if len(chosen) >= m:
                return
            if not seen[i]:
                seen[i] = True
                chosen.append(int(i))

    if must is not None:
        take(np.flatnonzero(must))
    take(np.argsort(-y, kind="stable")[: m // 4])
    take(np.arange(max(0, n - recent), n))
    take(rng.permutation(n))
    return np.sort(np.asarray(chosen))


def _align_fidelities(y: np.ndarray, fid: np.ndarray, target: int) -> np.ndarray:
    """Lower fidelities shifted so their median is the target fidelity's.

    Fidelities of one quantity often sit on different zeros (an MLIP's formation energy against a
    DFT total energy per atom, -154 eV against 0.5 eV); standardized together, such an offset
    leaves every variation inside one fidelity a sliver of the scale and the fit fails (held-out
    error 32 eV on carbon_24). The shift changes nothing the GP could not learn in its
    per-fidelity means; the target fidelity's values are untouched, so predictions are too."""
    y = np.array(y, dtype=np.float64)
    centre = np.median(y[fid == target])
    for f in np.unique(fid):
        if f != target:
            y[fid == f] += centre - np.median(y[fid == f])
    return y


def _hyperparameters(model) -> dict[str, list]:
    return {k: v.detach().cpu().tolist() for k, v in model.named_parameters()}


def _load_hyperparameters(model, params: Mapping[str, list] | None) -> int:
    """Copy saved values into parameters of the same name and shape; returns how many loaded."""
    if not params:
        return 0
    n = 0
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in params:
                v = torch.as_tensor(params[k], dtype=p.dtype)
                if v.shape == p.shape and torch.isfinite(v).all():
                    p.copy_(v)
                    n += 1
    return n


class Surrogate:
    """One GP per outcome, combined into a BoTorch ModelListGP (`self.model`); a
    `model.base.SurrogateModel`.

    `fit` takes {outcome name: OutcomeData}; `predict` returns means and standard deviations in the
    field's units, one column per outcome in `self.outcomes` order. Hyperparameters carry over
    between fits (`state_dict` is JSON-safe), so each refit starts from last round's optimum.
    """

    def __init__(self, max_exact: int = 2000, hyper_subset: int = 600, maxiter: int = 75,
                 fit_timeout_s: float = 20.0, target_fidelity: int | None = None, kernel: str = "rbf",
                 seed: int = 0):
        if kernel not in KERNELS:
            raise SurrogateError(f"kernel {kernel!r}: use one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.max_exact = max_exact
        self.hyper_subset = min(hyper_subset, max_exact)
        self.maxiter = maxiter
        self.fit_timeout_s = fit_timeout_s
        self.target_fidelity = target_fidelity
        self.seed = seed
        self.outcomes: list[str] = []
        self.models: list = []
        self.model = None
        self.reports: dict[str, FitReport] = {}
        self._params: dict[str, dict[str, list]] = {}
        self.train_X: dict[str, np.ndarray] = {}
        self.train_y: dict[str, np.ndarray] = {}
        self._moments: list[PosteriorMoments] = []

    def describe(self) -> str:
        """One line saying what this surrogate is, for benchmark and run logs."""
        return (f"Surrogate: one BoTorch GP per outcome (SingleTaskGP; MultiTaskGP across fidelities), "
                f"kernel {self.kernel} (RBF-ARD with BoTorch's dimension-scaled lengthscale prior"
                f"{' + a centred linear kernel' if self.kernel == 'rbf+linear' else ''}), inputs min-max scaled by "
                f"the training data, outcomes standardized; exact up to {self.max_exact} points, "
                f"hyperparameters on at most {self.hyper_subset}")

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, data: Mapping[str, OutcomeData], X_context: np.ndarray | None = None,
            optimize: bool = True) -> dict[str, FitReport]:
        """Fit one GP per outcome. Raises SurrogateError naming the outcome when one has no
        usable (finite) values.

        `X_context`: unlabelled feature rows (the pool the acquisition will pick from). With it,
        inputs are min-max scaled over the training rows and these together, so a handful of
        training points does not set the scale every other candidate is measured on.
        `optimize=False` conditions on `data` with the hyperparameters loaded by
        `load_state_dict` (fitted a moment earlier on nearly the same data, while the oracle
        ran) and optimizes only an outcome that has none."""
        from botorch.models import ModelListGP

        if not data:
            raise SurrogateError("nothing to model: no outcome has training data")
        dims = {name: np.asarray(d.X).shape[-1] for name, d in data.items()}
        if len(set(dims.values())) != 1:
            raise SurrogateError(f"outcomes disagree on the number of features: {dims}")
        self.outcomes, self.models, self.reports = [], [], {}
        for name, d in data.items():
            model, rep = self._fit_one(name, d, X_context, optimize)
            self.outcomes.append(name)
            self.models.append(model)
            self.reports[name] = rep
        self.model = ModelListGP(*self.models)
        self.model.eval()
        self._moments = []
        return self.reports

    def _fit_one(self, name: str, d: OutcomeData, X_context: np.ndarray | None = None, optimize: bool = True):
        from botorch.models import MultiTaskGP, SingleTaskGP
        from botorch.models.transforms import Normalize, Standardize

        t0 = time.perf_counter()
        X, y, keep = _finite_rows(d.X, d.y, name)
        fid = None if d.fidelity is None else np.asarray(d.fidelity, dtype=np.int64)[keep]
        n_dropped = int((~keep).sum())
        multi = fid is not None and len(np.unique(fid)) > 1
        target = self._target(fid) if fid is not None else None
        if multi:
            y = _align_fidelities(y, fid, target)
        rng = np.random.default_rng([self.seed, len(y)])
        # keep every target-fidelity point when subsetting: they are the scarce, expensive ones
        must = (fid == target) if multi else None
        rows = subset_indices(y, self.max_exact, rng, recent=self.max_exact // 8, must=must)
        hyper_rows = rows[subset_indices(y[rows], self.hyper_subset, rng, recent=self.hyper_subset // 8,
                                         must=None if must is None else must[rows])]
        if len(y) == 1 or np.ptp(y[rows]) == 0.0:
            # a constant target has no scale to standardize by; jitter keeps the fit well-posed
            y = y + 1e-6 * rng.standard_normal(len(y))
        lo, hi = X.min(0), X.max(0)
        if X_context is not None and len(X_context):
            ctx = np.asarray(X_context, dtype=np.float64)
            ctx = ctx[np.isfinite(ctx).all(axis=1)]
            if ctx.shape[1:] == X.shape[1:] and len(ctx):
                lo, hi = np.minimum(lo, ctx.min(0)), np.maximum(hi, ctx.max(0))
        hi = np.where(hi - lo < 1e-9, lo + 1.0, hi)  # constant columns: unit range, never /0
        bounds = torch.as_tensor(np.stack([lo, hi]), dtype=DTYPE)
        dim = X.shape[1]
        levels = np.unique(fid) if multi else None

        def build(idx: np.ndarray):
            tx = torch.as_tensor(X[idx], dtype=DTYPE)
            ty = torch.as_tensor(y[idx], dtype=DTYPE).unsqueeze(-1)
            if multi:
                # one task per fidelity (the MLIP's single point, its relaxation, a lab ...)
                task = torch.as_tensor(np.searchsorted(levels, fid[idx]).astype(np.float64), dtype=DTYPE).unsqueeze(-1)
                return MultiTaskGP(torch.cat([tx, task], -1), ty, task_feature=-1,
                                   output_tasks=[int(np.searchsorted(levels, target))],
                                   all_tasks=list(range(len(levels))),
                                   input_transform=Normalize(dim + 1, indices=list(range(dim)), bounds=bounds),
                                   outcome_transform=Standardize(m=1))
            return SingleTaskGP(tx, ty, covar_module=_covar_module(self.kernel, dim),
                                input_transform=Normalize(dim, bounds=bounds),
                                outcome_transform=Standardize(m=1))

        used = rows  # condition on every row with the loaded hyperparameters
        hyper = build(used) if not optimize else None
        if hyper is None or _load_hyperparameters(hyper, self._params.get(name)) == 0:
            optimize = True  # asked to, or none that fit this model: learn them on the subset
            used = hyper_rows
            hyper = build(used)
            self._optimize(hyper, _load_hyperparameters(hyper, self._params.get(name)) > 0)
        params = _hyperparameters(hyper)
        if len(used) == len(rows):
            model = hyper
        else:
            model = build(rows)
            _load_hyperparameters(model, params)
        self._params[name] = params
        model.eval()
        nll = self._nll(model)
        kind = "multi_fidelity" if multi else "exact"
        if len(rows) < len(y):
            kind = "multi_fidelity_subset" if multi else "subset"
        # the acquisition's baseline and reward scale: what was measured at the fidelity predicted
        at = (fid == target) if multi else np.ones(len(y), dtype=bool)
        self.train_X[name], self.train_y[name] = X[at], y[at]
        return model, FitReport(n_train=len(rows), nll=nll, seconds=time.perf_counter() - t0, kind=kind,
                                n_dropped=n_dropped, n_hyper=len(hyper_rows) if optimize else 0)

    def _target(self, fid: np.ndarray) -> int:
        if self.target_fidelity is not None and (fid == self.target_fidelity).any():
            return int(self.target_fidelity)
        return int(fid.max())

    def _optimize(self, model, warm: bool) -> None:
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood

        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        opts = {"maxiter": self.maxiter if warm else 2 * self.maxiter}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # a warm start must not be thrown away by a retry from prior samples
                fit_gpytorch_mll(mll, optimizer_kwargs={"options": opts, "timeout_sec": self.fit_timeout_s},
                                 max_attempts=1 if warm else 2)
            except Exception:
                pass  # hyperparameters stay where they were; the GP still predicts
        model.eval()

    @staticmethod
    def _nll(model) -> float:
        """Negative log marginal likelihood of the training targets per point, standardized scale,
        without the hyperparameter priors (which the fitting objective adds)."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train()
            try:
                out = model.likelihood(model(*model.train_inputs), *model.train_inputs)
                nll = -float(out.log_prob(model.train_targets)) / len(model.train_targets)
            except Exception:
                nll = math.nan
            model.eval()
        return nll

    # -- prediction ------------------------------------------------------------------------
    def index(self, name: str) -> int:
        if name not in self.outcomes:
            raise SurrogateError(f"{name!r} is not modeled (modeled: {', '.join(self.outcomes) or 'nothing'})")
        return self.outcomes.index(name)

    def predict(self, X: np.ndarray, observation_noise: bool = False, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and standard deviations (N, n_outcomes) in the field's units.

        `observation_noise` adds the fitted noise: the scatter a fresh measurement would show,
        the right width for calibration checks."""
        if self.model is None:
            raise SurrogateError("the surrogate is not fitted yet")
        X = np.asarray(X, dtype=np.float64)
        m = len(self.outcomes)
        if len(X) == 0:
            return np.zeros((0, m)), np.zeros((0, m))
        if len(self._moments) != len(self.models):
            self._moments = [PosteriorMoments(sub) for sub in self.models]
        means, stds = np.zeros((len(X), m)), np.zeros((len(X), m))
        for j, mom in enumerate(self._moments):
            for i in range(0, len(X), batch):
                mu, var = mom(torch.as_tensor(X[i : i + batch], dtype=DTYPE), observation_noise)
                means[i : i + batch, j] = mu.numpy()
                stds[i : i + batch, j] = var.clamp_min(0).sqrt().numpy()
        return means, stds

    def screen(self, X: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior means and upper bounds on the standard deviations (N, n_outcomes),
        several times cheaper than `predict` on large pools (see PosteriorMoments.screen)."""
        if self.model is None:
            raise SurrogateError("the surrogate is not fitted yet")
        X = np.asarray(X, dtype=np.float64)
        if len(self._moments) != len(self.models):
            self._moments = [PosteriorMoments(sub) for sub in self.models]
        means, stds = np.zeros((len(X), len(self.outcomes))), np.zeros((len(X), len(self.outcomes)))
        for j, mom in enumerate(self._moments):
            for i in range(0, len(X), batch):
                mu, var = mom.screen(torch.as_tensor(X[i : i + batch], dtype=DTYPE))
                means[i : i + batch, j] = mu.numpy()
                stds[i : i + batch, j] = var.sqrt().numpy()
        return means, stds

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Hyperparameters per outcome (no training data); JSON-safe."""
        return {"version": 1, "params": self._params}

    def load_state_dict(self, state: Mapping | None) -> None:
        if state and isinstance(state.get("params"), dict):
            self._params = {k: dict(v) for k, v in state["params"].items()}


class PosteriorMoments:
    """Marginal posterior mean and variance of one fitted BoTorch GP at many points.

    gpytorch's posterior builds the full test x test covariance even when only its diagonal is
    read (~40 s for 10^5 points); here the cross-covariance is formed in chunks and solved against
    a cached Cholesky factor, which is exact and takes about a second. Supports SingleTaskGP with
    any kernel (an RBF kernel, the default, on a fast path) and MultiTaskGP (target task) with an
    RBF kernel, the models `Surrogate` builds; anything else falls back to `model.posterior`."""

    def __init__(self, model):
        from botorch.models import MultiTaskGP
        from gpytorch.kernels import RBFKernel, ScaleKernel

        self.model = model
        self.multi = isinstance(model, MultiTaskGP)
        covar = model.covar_module
        self.fallback = False
        self.kernel = None  # a kernel evaluated generically (no RBF fast path)
        outputscale = torch.ones((), dtype=DTYPE)
        if self.multi:
            rbf, index = covar.kernels[0], covar.kernels[1]
        else:
            rbf, index = covar, None
        if isinstance(rbf, ScaleKernel) and isinstance(rbf.base_kernel, RBFKernel):
            outputscale, rbf = rbf.outputscale.detach(), rbf.base_kernel
        if not isinstance(rbf, RBFKernel):
            if self.multi:
                self.fallback = True
                return
            self.kernel = covar
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Xt = model.train_inputs[0]
            x = Xt[:, :-1] if self.multi else Xt
            self.x = x
            if self.kernel is None:
                self.ls = rbf.lengthscale.detach().reshape(-1)
                self.Z = x / self.ls
                K = outputscale * _rbf(self.Z, self.Z)
            else:
                K = self.kernel(x, x).to_dense().detach()
            noise = model.likelihood.noise.detach().reshape(-1)
            if self.multi:
                task = Xt[:, -1].long()
                B = index.covar_matrix.detach().to_dense() if hasattr(index.covar_matrix, "to_dense") else index.covar_matrix.detach()
                target = int(model._output_tasks[0])
                K = K * B[task][:, task]
                self.cross_task = outputscale * B[target, task]
                self.prior_var = outputscale * B[target, target]
                means = torch.stack([mm.constant.detach().reshape(()) for mm in model.mean_module.base_means])
                mu_train, self.mu = means[task], means[target]
                noise_train, self.noise = noise[task], noise[min(target, len(noise) - 1)]
            else:
                self.cross_task = None
                self.prior_var = outputscale
                self.mu = model.mean_module.constant.detach().reshape(())
                mu_train = self.mu.expand(len(x))
                noise_train = self.noise = noise[0]
            A = K + torch.diag(noise_train.expand(len(x))) + 1e-8 * torch.eye(len(x), dtype=DTYPE)
            self.L = torch.linalg.cholesky(A)
            r = (model.train_targets - mu_train).unsqueeze(-1)
            self.alpha = torch.cholesky_solve(r, self.L).squeeze(-1)
            # a subset S of training points for cheap variance upper bounds (see `screen`)
            n = len(x)
            r = min(n, self.SCREEN_POINTS)
            order = torch.argsort(model.train_targets, descending=True)
            S = torch.unique(torch.cat([order[: r // 2], torch.linspace(0, n - 1, r - r // 2).long()]))
            self.S = S
            self.AS_inv = torch.cholesky_inverse(torch.linalg.cholesky(A[S][:, S]))
            tf = getattr(model, "outcome_transform", None)
            self.y_mean = tf.means.detach().reshape(()) if tf is not None else torch.zeros((), dtype=DTYPE)
            self.y_std = tf.stdvs.detach().reshape(()) if tf is not None else torch.ones((), dtype=DTYPE)

    SCREEN_POINTS = 128

    def _cross_and_prior(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k(X, train) and the prior variance k(x, x) at each row of X (model scale)."""
        Xt = self._transform(X)
        if self.kernel is not None:
            Ks = self.kernel(Xt, self.x).to_dense().detach()
            return Ks, self.kernel(Xt, Xt, diag=True).detach().reshape(-1)
        Ks = _rbf(Xt / self.ls, self.Z)
        Ks = Ks * (self.cross_task if self.cross_task is not None else self.prior_var)
        return Ks, self.prior_var.expand(len(X))

    def screen(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(exact mean, an upper bound on the variance) at the rows of X, original scale.

        The bound is the variance given only the training subset S: conditioning on less data
        never shrinks the variance, and it costs |S|^2 instead of n^2 per point. Acquisition
        functions that grow with the variance (EI, UCB) computed with it are upper bounds too,
        which is what makes a screen with it safe (see Acquirer)."""
        if self.fallback:
            return self(X)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Ks, prior = self._cross_and_prior(X)
            mean = self.mu + Ks @ self.alpha
            KS = Ks[:, self.S]
            var = prior - ((KS @ self.AS_inv) * KS).sum(-1)
            return mean * self.y_std + self.y_mean, var.clamp_min(1e-12) * self.y_std**2

    def _transform(self, X: torch.Tensor) -> torch.Tensor:
        tf = getattr(self.model, "input_transform", None)
        if tf is None:
            return X
        if self.multi:
            Xa = torch.cat([X, torch.ones(len(X), 1, dtype=DTYPE)], -1)
            return tf(Xa)[:, :-1]
        return tf(X)

    def __call__(self, X: torch.Tensor, observation_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) at the rows of X, on the original outcome scale."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.fallback:
                post = self.model.posterior(X.unsqueeze(-2), observation_noise=observation_noise)
                return post.mean.reshape(-1), post.variance.reshape(-1)
            Ks, prior = self._cross_and_prior(X)
            mean = self.mu + Ks @ self.alpha
            v = torch.linalg.solve_triangular(self.L, Ks.T, upper=False)
            var = prior - (v * v).sum(0)
            if observation_noise:
                var = var + self.noise
            return mean * self.y_std + self.y_mean, var.clamp_min(1e-12) * self.y_std**2


def _rbf(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """exp(-|a - b|^2 / 2) for inputs already divided by the lengthscales."""
    d2 = (A * A).sum(-1, keepdim=True) - 2 * A @ B.T + (B * B).sum(-1)
    return torch.exp(-0.5 * d2.clamp_min(0))


# -- the single-outcome API the walking skeleton used; kept for callers that want one GP --------
def warm_up() -> None:
    """Fit a throw-away GP on 8 random points: the first fit in a process pays ~1 s of imports
    and first calls (BoTorch, GPyTorch, linear_operator), which a campaign would rather pay in
    a thread while its first round runs than when its second round picks."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gp(rng.random((8, 4)), rng.random(8))


def fit_gp(X: np.ndarray, y: np.ndarray, state: dict | None = None, **kw):
    """Fit a single GP to maximize y. Returns (Surrogate, FitReport); `state` is a previous
    `Surrogate.state_dict()` (warm start)."""
    s = Surrogate(**kw)
    s.load_state_dict(state)
    rep = s.fit({"y": OutcomeData(X, y)})["y"]
    return s, rep


def predict(model: Surrogate, X: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of the first outcome, on the original scale."""
    mean, std = model.predict(X, batch=batch)
    return mean[:, 0], std[:, 0]
