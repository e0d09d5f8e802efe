"""naggs_lightning.tune: search space, theory seed, storage errors, and real studies through the Python API.

The command line, config mode, killed and concurrent workers are in tests/test_tune_cli.py.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from naggs_lightning import NAGGS, theory
from naggs_lightning.callbacks import SpectralStabilityMonitor, StabilityWarning
from naggs_lightning.lr import LRError, theory_seed
from naggs_lightning.tasks import LeastSquares, QuadraticDataModule
from naggs_lightning.tune import SearchSpace, TuneError, keys, run
from naggs_lightning.tune.space import RelativeAlpha
from naggs_lightning.tune.storage import open_storage

# ----------------------------------------------------------------------------------------------------
# A small real task: 3-class softmax regression on fixed synthetic data, unshuffled batches.

_GEN = torch.Generator().manual_seed(0)
_W = torch.randn(8, 3, generator=_GEN)
_X = torch.randn(384, 8, generator=_GEN) * torch.linspace(0.3, 2.0, 8)
_Y = (_X @ _W + 0.5 * torch.randn(384, 3, generator=_GEN)).argmax(1)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(_X[:256], _Y[:256]), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(_X[256:], _Y[256:]), batch_size=128)


class TinyClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.1, mu: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lr, self.mu, self.gamma = lr, mu, gamma
        self.linear = nn.Linear(8, 3)

    def compute_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.linear(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.linear(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return NAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma)


class FixedGammaClassifier(TinyClassifier):
    def configure_optimizers(self):
        return NAGGS(self.parameters(), lr=self.lr, mu=self.mu, gamma=self.gamma, fixed_gamma=True)


def _trainer_kwargs(**extra):
    return {"max_epochs": 3, "accelerator": "cpu", "devices": 1, **extra}


def _exact_lambda_max(n_batches: int) -> float:
    """The largest top eigenvalue of the first batches' Hessians at initialisation, each formed in full."""
    model = TinyClassifier().double()
    weight, bias = (p.detach() for p in model.linear.parameters())
    tops = []
    for x, y in list(TinyData().train_dataloader())[:n_batches]:

        def loss(w, b, x=x, y=y):
            return F.cross_entropy(x.double() @ w.T + b, y)

        (hww, hwb), (hbw, hbb) = torch.autograd.functional.hessian(loss, (weight, bias))
        n = weight.numel()
        full = torch.cat(
            [torch.cat([hww.reshape(n, n), hwb.reshape(n, -1)], 1), torch.cat([hbw.reshape(-1, n), hbb], 1)], 0
        )
        tops.append(float(torch.linalg.eigvalsh(full)[-1]))
    return max(tops)


# ----------------------------------------------------------------------------------------------------
# Search space


def test_space_specs_and_defaults():
    space = SearchSpace.parse(
        {
            "lr": {"low": "1e-3", "high": 3, "log": True},
            "batch_size": [16, 32, 64],
            "weight_decay": "1e-5..1e-2:log",
            "trainer.max_epochs": "2..6",
            "gamma": 1.0,
            "model.init_args.hidden": {"low": 8, "high": 64, "step": 8},
        },
        config={"optimizer": {"class_path": "naggs_lightning.NAGGS"}},
    )
    d = space.distributions
    assert d["optimizer.init_args.lr"] == FloatDistribution(1e-3, 3.0, log=True)
    assert d["data.init_args.batch_size"] == CategoricalDistribution((16, 32, 64))
    assert d["optimizer.init_args.weight_decay"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert d["trainer.max_epochs"] == IntDistribution(2, 6)
    assert d["model.init_args.hidden"] == IntDistribution(8, 64, step=8)
    assert d["optimizer.init_args.mu"] == FloatDistribution(1e-4, 10.0, log=True)  # default range
    assert "optimizer.init_args.gamma" not in d and space.fixed == {"optimizer.init_args.gamma": 1.0}
    assert (space.alpha, space.mu, space.gamma) == tuple(f"optimizer.init_args.{k}" for k in ("lr", "mu", "gamma"))
    assert SearchSpace.from_json(space.to_json()) == space

    ref = space.reference({"optimizer.init_args.lr": 0.5, "optimizer.init_args.mu": 50.0, "trainer.max_epochs": 4})
    assert ref["optimizer.init_args.lr"] == 0.5  # configured and inside the range: kept
    # Outside the default range (the user gave none): the configured value is kept (AdaNAGGS's mu is 26).
    assert ref["optimizer.init_args.mu"] == 50.0
    assert ref["trainer.max_epochs"] == 4 and ref["data.init_args.batch_size"] == 32
    assert ref["optimizer.init_args.gamma"] == 1.0
    outside = space.reference({"optimizer.init_args.lr": 5.0, "optimizer.init_args.mu": -1.0})
    assert outside["optimizer.init_args.lr"] == pytest.approx(math.sqrt(1e-3 * 3.0))  # outside the user's range
    assert outside["optimizer.init_args.mu"] == pytest.approx(math.sqrt(1e-4 * 10.0))  # not a positive value


def test_the_default_mu_range_is_widened_to_hold_the_configured_mu():
    """AdaNAGGS's default mu (26) lies above the default range (1e-4 to 10): its seeded trials must still run at it."""
    from naggs_lightning.lr.seed import theory_seed
    from naggs_lightning.tune.seeding import MOMENTUM_DEFICIT, _theory_ranges

    space = SearchSpace.parse({}, config={"optimizer": {"class_path": "naggs_lightning.AdaNAGGS"}})
    theory_low = 1000.0 * (MOMENTUM_DEFICIT[0] / 4) ** 2
    for lambda_max, expected in ((1000.0, (theory_low, 26.0)), (40.0, (1e-4, 26.0))):  # L > 2 mu, then L <= 2 mu
        searched = _theory_ranges(space, theory_seed(lambda_max, 26.0, 26.0), 26.0, False, lambda: None)
        dist = searched.distributions["optimizer.init_args.mu"]
        assert dist.log and (dist.low, dist.high) == pytest.approx(expected)


def test_a_configured_mu_range_does_not_count_the_run_s_steps():
    """Counting the steps sets the datamodule up again: only a default mu range, which the count bounds, asks."""
    from naggs_lightning.lr.seed import theory_seed
    from naggs_lightning.tune.seeding import _theory_ranges

    def never() -> int:
        raise AssertionError("the steps were counted for a mu range the user gave")

    space = SearchSpace.parse({"mu": "1e-3..1:log"}, config={"optimizer": {"class_path": "naggs_lightning.NAGGS"}})
    searched = _theory_ranges(space, theory_seed(30.0, 0.05, 0.05), 0.05, False, never)
    assert searched.distributions["optimizer.init_args.mu"] == FloatDistribution(1e-3, 1.0, log=True)


@pytest.mark.parametrize(("steps", "deficit"), [(None, 0.02), (10_000, 0.02), (180, 10 / 180), (100, 0.1)])
def test_the_mu_range_keeps_a_momentum_whose_swings_die_out_within_the_run(steps, deficit):
    """At the lower end of the default mu range, the theory's step gives a heavy-ball momentum ``beta`` whose
    oscillations (decay time ``2 / (1 - beta)`` steps) die out five times over in a run of ``steps`` steps, and no
    heavier than ``1 - beta = 0.02``. Oracle: the closed-form optimal step and the heavy-ball identity of
    :mod:`naggs_lightning.theory`, against the range's small-mu rule ``1 - beta ~ 4 sqrt(mu / L)``."""
    from naggs_lightning import theory
    from naggs_lightning.lr.seed import theory_seed
    from naggs_lightning.tune.seeding import _theory_ranges

    lambda_max = 30.0
    space = SearchSpace.parse({}, config={"optimizer": {"class_path": "naggs_lightning.NAGGS"}})
    searched = _theory_ranges(space, theory_seed(lambda_max, 0.05, 0.05), 0.05, False, lambda: steps)
    dist = searched.distributions["optimizer.init_args.mu"]

    def one_minus_beta(mu: float) -> float:
        return 1.0 - theory.heavy_ball_equivalent(theory.alpha_opt(mu, lambda_max), mu, mu)[1]

    assert one_minus_beta(dist.low) == pytest.approx(deficit, rel=0.1)
    assert dist.high == pytest.approx(lambda_max * (0.5 / 4) ** 2)  # lightest momentum: not set by run length
    assert dist.low <= 0.05 <= dist.high  # the configured mu stays in the range


_CFG = {"optimizer": "NAGGS"}


def test_aliases_follow_where_the_config_builds_its_optimizer():
    with_optimizer = SearchSpace.parse({"lr": 0.1}, config={"optimizer": {"class_path": "naggs_lightning.NAGGS"}})
    assert with_optimizer.fixed == {"optimizer.init_args.lr": 0.1}
    # No optimizer section: the task's own configure_optimizers builds NAGGS from its init args.
    own = SearchSpace.parse({"lr": 0.1}, config={"model": {"class_path": "naggs_lightning.tasks.MLP"}})
    assert own.fixed == {"model.init_args.lr": 0.1}
    assert (own.alpha, own.mu, own.gamma) == ("model.init_args.lr", "model.init_args.mu", "model.init_args.gamma")
    assert SearchSpace.parse({"alpha": 0.1}).fixed == {"lr": 0.1}  # factory mode: plain names
    # A one-cycle schedule overwrites the optimizer's lr with its own: alpha is the schedule's peak.
    cycle = {"optimizer": "NAGGS", "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.OneCycleLR"}}
    assert SearchSpace.parse({}, config=cycle).alpha == "lr_scheduler.init_args.max_lr"


@pytest.mark.parametrize(
    ("spec", "config", "needle"),
    [
        ({"lr": {"low": 1, "high": 0.1}}, _CFG, "low < high"),
        ({"mu": {"low": 0, "high": 1, "log": True}}, _CFG, "log range needs low > 0"),
        ({"mu": {"low": 0.1, "hi": 1}}, _CFG, "unknown key(s) ['hi']"),
        ({"batch_size": []}, _CFG, "empty list"),
        ({"lr": 0.1, "optimizer.init_args.lr": 0.2}, _CFG, "given twice"),
        ({"lerning_rate": "0.1..1"}, _CFG, "unknown parameter 'lerning_rate'"),
        ({"lr": {"low": "a", "high": 1}}, None, "low must be a number"),
        ({"units": {"low": 1.5, "high": 4, "type": "int"}}, None, "integer bounds"),
    ],
)
def test_space_errors_name_the_parameter(spec, config, needle):
    with pytest.raises(TuneError) as info:
        SearchSpace.parse(spec, config=config)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------
# Theory seed against an independent oracle: the NAG-GS step applied to a 1-D quadratic.


def _rho(alpha: float, mu: float, gamma: float, lam: float) -> float:
    """Spectral radius of one NAG-GS step on f(x) = lam x^2 / 2, from the update equations (gamma fixed)."""

    def step(x, v):
        x1 = (x + alpha * v) / (1 + alpha)
        v1 = (gamma * v + alpha * mu * x1 - alpha * lam * x1) / (gamma + alpha * mu)
        return np.array([x1, v1])

    matrix = np.column_stack([step(1.0, 0.0), step(0.0, 1.0)])
    return float(np.abs(np.linalg.eigvals(matrix)).max())


def _worst(alpha, mu, gamma, lam_hi):
    return max(_rho(alpha, mu, gamma, lam) for lam in np.linspace(mu, lam_hi, 41))


@pytest.mark.parametrize(("mu", "L"), [(0.01, 1.0), (0.1, 10.0), (0.2, 0.9)])
def test_seed_is_safety_times_the_argmin_of_the_spectral_radius(mu, L):
    seed = theory_seed(L, mu, mu, safety=0.9)
    # The range the theory optimises over: [mu, L], or [mu, 2 mu] when L <= 2 mu.
    hi = max(L, 2 * mu)
    grid = np.geomspace(0.05, 20.0, 200)
    i = int(np.argmin([_worst(a, mu, mu, hi) for a in grid]))
    grid = np.geomspace(grid[max(i - 2, 0)], grid[min(i + 2, len(grid) - 1)], 200)
    best = grid[int(np.argmin([_worst(a, mu, mu, hi) for a in grid]))]
    assert seed.alpha_theory == pytest.approx(best, rel=3e-3)
    assert seed.alpha == pytest.approx(0.9 * best, rel=3e-3)
    assert _rho(seed.alpha, mu, mu, L) < 1.0
    if 2 * mu < L:
        assert not seed.all_stable
        edge = seed.alpha_crit
        assert _rho(0.999 * edge, mu, mu, L) < 1.0 < _rho(1.001 * edge, mu, mu, L)
        assert seed.alpha < edge
    else:  # every step is stable: no edge, and the seed is 0.9 x 2 (1 + sqrt 2)
        assert seed.all_stable and math.isinf(seed.alpha_crit)
        assert all(_rho(a, mu, mu, L) < 1.0 for a in (1.0, 10.0, 1e3))
        assert seed.alpha == pytest.approx(0.9 * 2 * (1 + math.sqrt(2)))


def test_seed_never_above_the_edge_for_large_gamma():
    # gamma far above mu: the paper's alpha_c is capped by the estimate's own edge.
    seed = theory_seed(100.0, 0.01, 5.0, safety=1.0)
    assert seed.alpha <= seed.alpha_crit
    assert _rho(seed.alpha * 0.999, 0.01, 5.0, 100.0) < 1.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [((float("nan"), 0.1, 0.1), "not finite"), ((-1.0, 0.0, 1.0), "mu = 0"), ((1.0, 0.1, 0.1, 1.5), "safety")],
)
def test_seed_errors(args, needle):
    lam, mu, gamma, *safety = args
    with pytest.raises(LRError, match=needle):
        theory_seed(lam, mu, gamma, safety=safety[0] if safety else 0.9)


def test_relative_alpha_is_centred_on_the_seed_of_each_mu_and_never_leaves_the_user_range():
    rel = RelativeAlpha(lambda_max=2.0, safety=0.9, window=10.0, low=1e-3, high=1.0)
    for mu, gamma in [(0.01, 0.01), (0.1, 0.05), (0.5, 2.0)]:
        # gamma evolves to mu, so the seed is the gamma = mu optimum whatever the starting gamma.
        seed = theory_seed(2.0, mu, mu, safety=0.9).alpha
        assert rel.alpha(1.0, mu, gamma) == pytest.approx(min(seed, 1.0))
        assert rel.alpha(0.1, mu, gamma) == pytest.approx(max(0.1 * seed, 1e-3))
    assert rel.alpha(10.0, 0.5, 2.0) == 1.0  # cut at the user's high
    # With gamma held fixed, the seed is the paper's alpha_c at that gamma.
    fixed = RelativeAlpha(lambda_max=2.0, safety=0.9, window=10.0, low=1e-3, high=1.0, fixed_gamma=True)
    assert fixed.alpha(1.0, 0.1, 0.05) == pytest.approx(theory_seed(2.0, 0.1, 0.05, safety=0.9).alpha)
    assert fixed.alpha(1.0, 0.1, 0.05) != pytest.approx(rel.alpha(1.0, 0.1, 0.05))
    space = SearchSpace.parse({}).seeded(rel)
    assert keys.ALPHA_RATIO in space.distributions and "lr" not in space.distributions
    assert space.distributions[keys.ALPHA_RATIO] == FloatDistribution(0.1, 10.0, log=True)
    assert SearchSpace.from_json(space.to_json()) == space

    study = optuna.create_study()
    trial = study.ask({keys.ALPHA_RATIO: FloatDistribution(0.1, 10.0, log=True)})
    params = space.suggest(trial)
    expected = rel.alpha(trial.params[keys.ALPHA_RATIO], params["mu"], params["gamma"])
    assert params["lr"] == expected and keys.ALPHA_RATIO not in params
    study.tell(trial, 0.0)
    assert space.values(study.trials[0]) == {"lr": expected, "mu": params["mu"], "gamma": params["gamma"]}


# ----------------------------------------------------------------------------------------------------
# Storage


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not-a-url", "not a database URL"),
        ("sqlite:////nonexistent-dir/sub/x.db", "cannot reach storage sqlite:////nonexistent-dir/sub/x.db"),
        (
            "postgresql+psycopg2://tuner:s3cret@127.0.0.1:9/optuna",
            "cannot reach storage postgresql+psycopg2://tuner:***@127.0.0.1:9/optuna",
        ),
        ("nosuchdb://host/db", "no database driver"),
        ("postgresql+nosuchdriver://tuner:s3cret@host/db", "no database driver for 'postgresql+nosuchdriver'"),
    ],
)
def test_storage_errors_are_one_line_and_hide_passwords(url, needle):
    with pytest.raises(TuneError) as info:
        open_storage(url)
    message = str(info.value)
    assert needle in message and "s3cret" not in message and "\n" not in message


# ----------------------------------------------------------------------------------------------------
# Real studies through the Python API


def test_fixed_gamma_is_seeded_at_the_papers_alpha_c_for_its_own_gamma():
    # Held fixed, gamma never relaxes to mu: the seed is the fixed-gamma optimum alpha_c(mu, gamma, L).
    study = run(
        model=lambda p: FixedGammaClassifier(**p),
        datamodule=TinyData(),
        trainer_kwargs=_trainer_kwargs(max_epochs=1),
        space={"mu": 0.05, "gamma": 1.0},
        storage=None,
        curvature_batches=3,
        warmup_steps=0,  # the curvature at initialisation, which the exact Hessian below checks
        seed_trials=1,
        n_trials=1,
        verbose=False,
    )
    lam = _exact_lambda_max(3)
    expected = 0.9 * min(theory.alpha_c(0.05, 1.0, lam), theory.alpha_crit(0.05, 1.0, lam))
    assert study.trials[0].user_attrs[keys.ALPHA] == pytest.approx(expected, rel=2e-3)
    assert expected != pytest.approx(0.9 * theory.alpha_opt(0.05, lam), rel=0.05)


def test_with_mu_searched_the_seeded_trials_bracket_the_step_at_the_configured_mu():
    """The seeded trials vary the step only: retrained from six seeds on the panel of user models, the theory's step
    at the configured mu was the best seeded trial on all five models, and the first trial's step at ten times mu (a
    lighter momentum, which the BN-ResNet's seed-0 run had favoured) the worst or next to it."""
    study = run(
        model=lambda p: TinyClassifier(**p),
        datamodule=TinyData(),
        trainer_kwargs=_trainer_kwargs(max_epochs=1),
        space={"mu": "1e-3..1:log", "gamma": 0.05},
        storage=None,
        curvature_batches=1,
        warmup_steps=0,
        bracket_steps=0,
        n_trials=5,
        sampler_seed=0,
        verbose=False,
    )
    seeded, sampled = study.trials[:4], study.trials[4]
    assert all(t.user_attrs[keys.SEEDED] for t in seeded) and not sampled.user_attrs.get(keys.SEEDED)
    assert [t.params[keys.ALPHA_RATIO] for t in seeded] == [1.0, 0.5, 2.0, 0.25]
    assert len({t.params["mu"] for t in seeded}) == 1  # the reference point's mu, for every seeded trial


@pytest.mark.slow
def test_study_end_to_end_on_sqlite(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = dict(
        model=lambda p: TinyClassifier(**p),
        datamodule=TinyData(),
        trainer_kwargs=_trainer_kwargs(),
        space={"mu": 0.05},  # pinned: the seed is alpha*(0.05, L) with gamma seeded at mu
        storage=storage,
        study_name="tiny",
        sampler_seed=0,
        curvature_batches=3,
        warmup_steps=0,  # the curvature at initialisation, which the exact Hessian below checks
        bracket_steps=0,  # the seed is the theory's step itself
        output_dir=tmp_path / "out",
        verbose=False,
    )
    study = run(n_trials=5, **common)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)

    # The first trial is the seed, recomputed from an exact Hessian of the same batches.
    lam = _exact_lambda_max(3)
    expected = 0.9 * 2 * (0.05 + math.sqrt(0.05 * lam)) / (lam - 0.05)
    first = trials[0]
    # Four seeded trials first, bracketing it: the theory's step, half, twice and a quarter of it (mu is pinned, so
    # no seeded trial tries a larger mu).
    assert [t.params[keys.ALPHA_RATIO] for t in trials[:4]] == [1.0, 0.5, 2.0, 0.25]
    assert all(t.user_attrs[keys.SEEDED] for t in trials[:4]) and not trials[4].user_attrs.get(keys.SEEDED)
    assert first.user_attrs[keys.ALPHA] == pytest.approx(expected, rel=2e-3)
    assert "gamma" not in first.params  # left to its default: not searched, it starts at the seed's mu
    attrs = study.user_attrs[keys.STUDY_SEED]
    assert attrs["lambda_max"] == pytest.approx(lam, rel=1e-3)
    assert attrs["alpha"] == first.user_attrs[keys.ALPHA] and "alpha_crit" in attrs["regime"]
    # Every trial's alpha lies within the seed window (a factor 4) of the seed.
    seed = 0.9 * min(theory.alpha_opt(0.05, lam), theory.alpha_crit(0.05, 0.05, lam))
    for t in trials:
        assert seed / 4 * (1 - 1e-9) <= t.user_attrs[keys.ALPHA] <= seed * 4 * (1 + 1e-9)

    best = study.best_trial
    written = yaml.safe_load((tmp_path / "out" / "best_params.yaml").read_text())
    assert written["trial"] == best.number
    assert written["params"] == {"lr": best.user_attrs[keys.ALPHA], "gamma": 0.05, "mu": 0.05}
    for name in ("history.png", "alpha.png", "importances.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Re-running resumes: nothing re-seeded, the finished trials untouched, the total grows to n_trials.
    before = [(t.number, t.params, t.user_attrs, t.value, t.state) for t in trials]
    study = run(n_trials=7, **common)
    after = study.get_trials(deepcopy=False)
    assert [(t.number, t.params, t.user_attrs, t.value, t.state) for t in after[:5]] == before
    assert len(after) == 7 and sum(bool(t.user_attrs.get(keys.SEEDED)) for t in after) == 4
    assert study.user_attrs[keys.STUDY_SEED] == attrs


class AlwaysPrune(optuna.pruners.BasePruner):
    """Asks every trial to stop at every report it is asked about."""

    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize(
    ("limits", "reports", "pruned"),
    [
        ({"max_epochs": 3}, 1, True),  # stopped at its first validation, two epochs early
        ({"max_epochs": 1}, 1, False),  # its one validation ends the run: nothing to save, its value counts
        ({"max_epochs": -1, "max_steps": 16}, 1, True),
        ({"max_epochs": -1, "max_steps": 8}, 1, False),  # the step limit ends the run at the first epoch's end
    ],
)
def test_the_pruner_is_not_asked_at_the_validation_that_ends_the_run(limits, reports, pruned):
    study = run(
        model=lambda p: TinyClassifier(**p),
        datamodule=TinyData(),  # 8 training batches an epoch
        trainer_kwargs={"accelerator": "cpu", "devices": 1, **limits},
        space={"lr": 0.1, "mu": 1.0, "gamma": 1.0},
        storage=None,
        n_trials=1,
        pruner=AlwaysPrune(),
        verbose=False,
    )
    (trial,) = study.trials
    assert len(trial.intermediate_values) == reports
    assert trial.state == (TrialState.PRUNED if pruned else TrialState.COMPLETE)
    if not pruned:
        assert trial.value == trial.intermediate_values[reports - 1]


@pytest.mark.slow
def test_diverging_and_monitor_stopped_trials_are_pruned_with_reason():
    # Least squares with Hessian spectrum in [0.1, 10] (known): the stability edge is known too.
    common = dict(
        model=lambda p: LeastSquares(dim=10, **p),
        datamodule=QuadraticDataModule(dim=10, mu=0.1, L=10.0, n_samples=400, batch_size=100),
        metric="val_loss",
        storage=None,
        n_trials=1,
        pruner="none",
        verbose=False,
    )
    # alpha 50 with mu = gamma = 1e-3: effective step near 1/mu = 1000 against 2 / L = 0.2.
    study = run(trainer_kwargs=_trainer_kwargs(), space={"lr": 50.0, "mu": 1e-3, "gamma": 1e-3}, **common)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[keys.PRUNED_REASON].startswith("diverged: the training loss is not finite")

    # Twice the edge: unstable, still finite after one step, when the monitor's first probe stops the run.
    alpha = 2.0 * theory_seed(10.0, 0.1, 0.1).alpha_crit
    monitor = SpectralStabilityMonitor(every_n_steps=50, on_unstable="stop")
    with pytest.warns(StabilityWarning, match="past the stability edge"):
        study = run(
            trainer_kwargs=_trainer_kwargs(callbacks=[monitor]), space={"lr": alpha, "mu": 0.1, "gamma": 0.1}, **common
        )
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[keys.PRUNED_REASON].startswith("diverging: stopped by SpectralStabilityMonitor")
    assert monitor.history[0]["step"] == 1


@pytest.mark.slow
def test_threads_share_one_study_and_stop_at_exactly_n_trials(tmp_path):
    study = run(
        model=lambda p: TinyClassifier(**p),
        datamodule=lambda p: TinyData(),
        trainer_kwargs=_trainer_kwargs(max_epochs=2),
        storage=f"sqlite:///{tmp_path / 'threads.db'}",
        study_name="threads",
        n_trials=6,
        n_jobs=2,
        verbose=False,
    )
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6
    assert all(t.user_attrs.get(keys.SURPLUS) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def test_a_metric_the_model_does_not_log_is_refused_before_the_storage_is_written(tmp_path):
    db = tmp_path / "typo.db"
    logged = r"logged: \['val_acc', 'val_loss'\]"
    with pytest.raises(TuneError, match=r"the metric 'val_accuracy' is not logged during validation; " + logged):
        run(
            model=lambda p: TinyClassifier(**p),
            datamodule=TinyData(),
            trainer_kwargs=_trainer_kwargs(max_epochs=1),
            metric="val_accuracy",
            storage=f"sqlite:///{db}",
            n_trials=2,
            verbose=False,
        )
    assert not db.exists()


def test_bad_options_fail_before_the_storage_is_touched(tmp_path):
    db = tmp_path / "never.db"
    common = dict(model=lambda p: TinyClassifier(**p), datamodule=TinyData(), storage=f"sqlite:///{db}", verbose=False)
    for kwargs, needle in [
        ({"n_trials": 0}, "n_trials must be an integer >= 1"),
        ({"safety": 1.5}, "safety must be in (0, 1]"),
        ({"pruner": "sometimes"}, "pruner must be one of"),
        ({"direction": "up"}, "direction must be"),
        ({"space": {"mu": {"low": 1, "high": 0}}}, "mu: needs finite low < high"),
    ]:
        with pytest.raises(TuneError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            run(**common, **kwargs)
    assert not db.exists()
    with pytest.raises(TuneError, match="either a config"):
        run(verbose=False)


def test_a_config_that_names_only_the_optimizer_class_is_read_at_the_class_defaults():
    from naggs_lightning import NAGGS, AdaNAGGS
    from naggs_lightning.tune.objective import ConfigBuilder

    for cls in (NAGGS, AdaNAGGS):
        builder = ConfigBuilder({"optimizer": {"class_path": f"naggs_lightning.{cls.__name__}"}})
        defaults = cls([torch.zeros(1, requires_grad=True)]).defaults
        assert builder.configured("optimizer.init_args.mu") == defaults["mu"]
        assert builder.configured("optimizer.init_args.gamma") == defaults["gamma"]
    given = ConfigBuilder({"optimizer": {"class_path": "naggs_lightning.NAGGS", "init_args": {"mu": 0.5}}})
    assert given.configured("optimizer.init_args.mu") == 0.5
    assert given.configured("optimizer.init_args.no_such_argument") is None
    assert ConfigBuilder({"optimizer": {"class_path": "NAGGS"}}).configured("optimizer.init_args.mu") is None
