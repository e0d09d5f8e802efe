"""The search space: which hyper-parameters a study varies, over which ranges, and which it pins.

A space maps parameter names to specs. In config mode (a LightningCLI recipe) a name is a dotted
path into the config, such as ``optimizer.init_args.lr`` or ``data.init_args.batch_size``; the short
names ``lr`` (or ``alpha``), ``mu``, ``gamma``, ``weight_decay`` and ``batch_size`` are aliases for the
usual paths. In factory mode (the Python API with a model factory) names are free and reach the
factory as the keys of its ``params`` dict.

A spec is one of

* a mapping ``{low: 1.0e-3, high: 10, log: true}`` (optional ``step``; ``type: int`` or ``float``,
  inferred from the bounds when absent): a numeric range;
* the compact string ``"1e-3..10"`` or ``"1e-3..10:log"`` (integers when both bounds are written as
  integers): the same;
* a list ``[32, 64, 128]``: a categorical choice (choices may be lists or mappings themselves:
  ``[[64], [128, 64]]`` for layer sizes);
* any other scalar: a fixed value, applied to every trial and not searched;
* an :class:`optuna.distributions.BaseDistribution` (Python API only).

Unless the user gives them, alpha (the optimizer's ``lr``), mu and gamma are searched over
:data:`DEFAULT_RANGES`. Giving a scalar pins one of them (``mu: 0.1``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from naggs_lightning.lr.seed import TheorySeed, theory_seed
from naggs_lightning.tune.ceiling import capped
from naggs_lightning.tune.errors import TuneError
from naggs_lightning.tune.keys import ALPHA, ALPHA_RATIO

__all__ = [
    "RelativeAlpha",
    "SearchSpace",
    "DEFAULT_RANGES",
    "CONFIG_ALIASES",
    "CONFIG_ROOTS",
    "config_aliases",
    "parse_spec",
]

#: Ranges searched when the user says nothing about alpha, mu or gamma (log scale: they are scales).
DEFAULT_RANGES: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 10.0, log=True),
    "mu": FloatDistribution(1e-4, 10.0, log=True),
    "gamma": FloatDistribution(1e-3, 10.0, log=True),
}

#: Short names accepted in config mode, and the config path each one stands for, for a config with an
#: ``optimizer:`` section and no peak-lr schedule (see :func:`config_aliases` for the others).
CONFIG_ALIASES: dict[str, str] = {
    "lr": "optimizer.init_args.lr",
    "alpha": "optimizer.init_args.lr",
    "mu": "optimizer.init_args.mu",
    "gamma": "optimizer.init_args.gamma",
    "weight_decay": "optimizer.init_args.weight_decay",
    "batch_size": "data.init_args.batch_size",
}


#: Schedulers that overwrite the optimizer's lr with their own peak ``max_lr``.
PEAK_LR_SCHEDULERS = ("OneCycleLR", "CyclicLR")


def config_aliases(config: Mapping[str, Any]) -> dict[str, str]:
    """:data:`CONFIG_ALIASES` for ``config``.

    Without an ``optimizer:`` section alpha, mu and gamma live under ``model.init_args``. Under a
    ``OneCycleLR`` or ``CyclicLR`` scheduler alpha is the schedule's peak ``lr_scheduler.init_args.max_lr``
    (the optimizer's own lr is overwritten by the schedule): the seed then sets the largest step taken.
    """
    aliases = dict(CONFIG_ALIASES)
    if config.get("optimizer") is None:
        aliases.update({"lr": "model.init_args.lr", "mu": "model.init_args.mu", "gamma": "model.init_args.gamma"})
    scheduler = config.get("lr_scheduler")
    name = scheduler.get("class_path") if isinstance(scheduler, Mapping) else scheduler
    if isinstance(name, str) and name.rsplit(".", 1)[-1] in PEAK_LR_SCHEDULERS:
        aliases["lr"] = "lr_scheduler.init_args.max_lr"
    aliases["alpha"] = aliases["lr"]
    return aliases


#: Top-level sections of a LightningCLI config a parameter may live in.
CONFIG_ROOTS = ("model", "data", "trainer", "optimizer", "lr_scheduler", "seed_everything")

_RANGE = re.compile(r"^\s*([^.\s][^\s]*?)\s*\.\.\s*([^\s:]+)\s*(?::\s*(log|linear))?\s*$")
_SPEC_KEYS = {"low", "high", "log", "step", "type", "choices"}


def _number(text: Any, what: str) -> int | float:
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise TuneError(f"{what} must be a number, got {text!r}")
    if isinstance(text, (int, float)):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise TuneError(f"{what} must be a number, got {text!r}") from None


def _scalar(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads "1e-3" as a string; a fixed value that looks like a number is one.
    if isinstance(value, str):
        try:
            return _number(value, "")
        except TuneError:
            return value
    return value


def _range(name: str, low: Any, high: Any, *, log: bool, step: Any = None, kind: str | None = None) -> BaseDistribution:
    lo, hi = _number(low, f"{name}: low"), _number(high, f"{name}: high")
    if step is not None:
        step = _number(step, f"{name}: step")
    if kind is None:
        kind = "int" if all(isinstance(x, int) for x in (lo, hi, 1 if step is None else step)) else "float"
    if kind not in ("int", "float"):
        raise TuneError(f"{name}: type must be 'int' or 'float', got {kind!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise TuneError(f"{name}: needs finite low < high, got low={lo!r}, high={hi!r}")
    if log and lo <= 0:
        raise TuneError(f"{name}: a log range needs low > 0, got low={lo!r}")
    if step is not None and log:
        raise TuneError(f"{name}: step and log cannot be combined")
    if step is not None and step <= 0:
        raise TuneError(f"{name}: step must be > 0, got {step!r}")
    if kind == "int" and (lo != int(lo) or hi != int(hi) or (step is not None and step != int(step))):
        raise TuneError(f"{name}: an int range needs integer bounds and step, got low={lo!r}, high={hi!r}")
    try:
        if kind == "int":
            return IntDistribution(int(lo), int(hi), log=log, step=1 if step is None else int(step))
        return FloatDistribution(float(lo), float(hi), log=log, step=None if step is None else float(step))
    except ValueError as exc:  # optuna's own checks
        raise TuneError(f"{name}: {exc}") from None


def parse_spec(name: str, spec: Any) -> BaseDistribution | None:
    """The distribution a spec declares, or ``None`` when the spec is a fixed value.

    Raises :class:`TuneError` naming ``name`` for a malformed spec.
    """
    if isinstance(spec, BaseDistribution):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise TuneError(
                f"{name}: unknown key(s) {sorted(unknown)} in the range spec; allowed: {sorted(_SPEC_KEYS)}"
            )
        if "choices" in spec:
            if set(spec) != {"choices"}:
                raise TuneError(f"{name}: 'choices' cannot be combined with {sorted(set(spec) - {'choices'})}")
            return parse_spec(name, list(spec["choices"]))
        if "low" not in spec or "high" not in spec:
            raise TuneError(f"{name}: a range spec needs both 'low' and 'high', got {dict(spec)}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise TuneError(f"{name}: log must be true or false, got {log!r}")
        return _range(name, spec["low"], spec["high"], log=log, step=spec.get("step"), kind=spec.get("type"))
    if isinstance(spec, (list, tuple)):
        choices = tuple(_scalar(c) for c in spec)
        if not choices:
            raise TuneError(f"{name}: an empty list of choices")
        if _structured(choices):
            # Optuna's categorical choices are scalars: list- or mapping-valued choices (layer sizes,
            # ``[[64], [128, 64]]``) are stored as their JSON text and decoded by SearchSpace.
            texts = tuple(_as_text(c) for c in choices)
            if len(set(texts)) != len(texts):
                raise TuneError(f"{name}: repeated choices in {list(choices)}")
            return CategoricalDistribution(texts)
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise TuneError(f"{name}: choices must be numbers, strings, booleans or null, got {bad[0]!r}")
        if len(set(choices)) != len(choices):
            raise TuneError(f"{name}: repeated choices in {list(choices)}")
        return CategoricalDistribution(choices)
    if isinstance(spec, str):
        match = _RANGE.match(spec)
        if match:
            low, high, scale = match.groups()
            return _range(name, low, high, log=scale == "log")
    return None


def _as_text(choice: Any) -> str:
    """How a structured (list- or mapping-valued) choice is stored in Optuna; ``json.loads`` reads it back."""
    return json.dumps(choice, sort_keys=True)


def _structured(choices: tuple[Any, ...]) -> bool:
    return any(isinstance(c, (list, tuple, Mapping)) for c in choices)


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution) and value != int(value):
        return False
    return dist.low <= value <= dist.high


def _is_default(dist: BaseDistribution) -> bool:
    return any(dist is default for default in DEFAULT_RANGES.values())


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def centre(dist: BaseDistribution) -> Any:
    """The middle of a distribution: geometric for log ranges, the middle choice for categoricals."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[len(dist.choices) // 2]
    mid = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
    if isinstance(dist, IntDistribution):
        return min(max(int(round(mid)), dist.low), dist.high)
    return mid


@dataclass(frozen=True)
class RelativeAlpha:
    r"""alpha searched as a multiple of the theory's step for each trial's own mu and gamma.

    The study samples the ratio :math:`r` (``alpha/seed`` in the trials' parameters) log-uniformly
    in ``[ratio_low, ratio_high]`` (by default ``[1 / window, window]``; a seeded study narrows it to what the
    short runs of its bracket found: :func:`~naggs_lightning.tune.seeding.ratio_range`) and trains with

    .. math::

        \alpha = \operatorname{clip}\bigl(r \cdot \alpha_{\rm seed}(\mu, \gamma, L),\ [\text{low}, \text{high}]\bigr)

    where :math:`\alpha_{\rm seed}` is :func:`~naggs_lightning.lr.seed.theory_seed` at the trial's mu and gamma and the
    curvature ``lambda_max`` estimated once for the study. So the alpha range is centred (log scale)
    on the seed of every (mu, gamma) the study tries, never leaves the user's ``[low, high]``, and
    the search learns one ratio instead of chasing a step that moves with mu (alpha* ~ 2 sqrt(mu / L)
    for mu << L). With mu and gamma pinned this is the fixed range ``seed x [1/window, window]``.

    Unless ``fixed_gamma``, the seed is taken at gamma = mu whatever the trial's starting gamma (gamma
    relaxes to mu; see :mod:`naggs_lightning.lr.seed`), so the ratio means the same for every gamma.
    """

    lambda_max: float
    safety: float
    window: float
    low: float
    high: float
    fixed_gamma: bool = False
    ratio_low: float | None = None
    ratio_high: float | None = None

    def distribution(self) -> FloatDistribution:
        """The distribution of the ratio."""
        low = 1.0 / self.window if self.ratio_low is None else self.ratio_low
        high = self.window if self.ratio_high is None else self.ratio_high
        return FloatDistribution(low, high, log=True)

    def seed(self, mu: float, gamma: float) -> TheorySeed:
        """The theory seed of a trial at ``mu`` and starting ``gamma`` (taken at gamma = mu unless fixed_gamma)."""
        mu = float(mu)
        return theory_seed(self.lambda_max, mu, float(gamma) if self.fixed_gamma else mu, safety=self.safety)

    def alpha(self, ratio: float, mu: float, gamma: float) -> float:
        """The step a trial trains with for ``ratio`` at its ``mu`` and ``gamma``."""
        return min(max(ratio * self.seed(mu, gamma).alpha, self.low), self.high)


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters (``distributions``) and pinned ones (``fixed``), keyed by full name.

    ``alpha``, ``mu`` and ``gamma`` are the names the NAG-GS step size, mu and gamma have in this
    space (config paths in config mode, plain names in factory mode); the theory seed uses them.
    With ``relative`` set (a seeded study), alpha is not sampled itself: the space samples
    :data:`ALPHA_RATIO` and derives alpha from it and the trial's mu and gamma (see
    :class:`RelativeAlpha`).
    """

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    alpha: str = "lr"
    mu: str = "mu"
    gamma: str = "gamma"
    relative: RelativeAlpha | None = None
    #: Categorical parameters whose choices are lists or mappings, stored in Optuna as JSON text.
    structured: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, *, config: Mapping[str, Any] | None = None) -> SearchSpace:
        """Build a space from a user spec, adding the default ranges of alpha, mu and gamma.

        With a LightningCLI ``config`` (config mode) aliases are resolved (:func:`config_aliases`)
        and every name must start with one of :data:`CONFIG_ROOTS` (whether the rest of the path
        exists is checked when the first configuration is built). Without one (factory mode)
        names are free and ``alpha`` means ``lr``. The same parameter named twice (``lr`` and
        ``optimizer.init_args.lr``) is an error.
        """
        spec = dict(spec or {})
        config_mode = config is not None
        aliases = config_aliases(config) if config_mode else {"alpha": "lr"}
        resolve = lambda n: aliases.get(n, n)  # noqa: E731
        roles = {role: resolve(role) for role in ("lr", "mu", "gamma")}
        distributions: dict[str, BaseDistribution] = {}
        fixed: dict[str, Any] = {}
        structured: list[str] = []
        seen: dict[str, str] = {}
        for raw_name, raw_spec in spec.items():
            if not isinstance(raw_name, str) or not raw_name.strip():
                raise TuneError(f"parameter names must be non-empty strings, got {raw_name!r}")
            name = resolve(raw_name.strip())
            if name in seen:
                raise TuneError(f"parameter {name!r} is given twice (as {seen[name]!r} and {raw_name!r})")
            seen[name] = raw_name
            if config_mode and name.split(".")[0] not in CONFIG_ROOTS:
                raise TuneError(
                    f"unknown parameter {raw_name!r}: config parameters are dotted paths under "
                    f"{', '.join(CONFIG_ROOTS)} (or one of the aliases {', '.join(CONFIG_ALIASES)})"
                )
            dist = parse_spec(name, raw_spec)
            if dist is None:
                fixed[name] = _scalar(raw_spec)
            else:
                distributions[name] = dist
                if isinstance(raw_spec, (list, tuple)) and _structured(tuple(raw_spec)):
                    structured.append(name)
        for role, name in roles.items():
            if name not in distributions and name not in fixed:
                distributions[name] = DEFAULT_RANGES[role]
        return cls(
            distributions,
            fixed,
            alpha=roles["lr"],
            mu=roles["mu"],
            gamma=roles["gamma"],
            structured=tuple(structured),
        )

    def decode(self, name: str, value: Any) -> Any:
        """A parameter's value as the model takes it (a structured choice's JSON text decoded)."""
        return json.loads(value) if name in self.structured else value

    def encode(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` (values as the model takes them) as Optuna stores them, for ``enqueue_trial``."""
        return {n: _as_text(v) if n in self.structured else v for n, v in point.items()}

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Every parameter's value for ``trial`` (sampled, derived and fixed), keyed as the model needs them.

        With ``relative`` set, the derived alpha is also stored in the trial's user attribute
        :data:`ALPHA`, and the ratio's range ends below the trials that collapsed
        (:func:`~naggs_lightning.tune.ceiling.capped`).
        """
        params: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            if name == ALPHA_RATIO and isinstance(trial, optuna.Trial):
                dist = capped(dist, trial.study)  # below the lowest step at which a trial collapsed
            if isinstance(dist, FloatDistribution):
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                params[name] = self.decode(name, trial.suggest_categorical(name, dist.choices))
        params.update(self.fixed)
        if self.relative is not None:
            ratio = params.pop(ALPHA_RATIO)
            params[self.alpha] = self.relative.alpha(ratio, params[self.mu], params[self.gamma])
            trial.set_user_attr(ALPHA, params[self.alpha])
        return params

    def values(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """The searched values a finished trial trained with (alpha itself in place of its ratio)."""
        params = {name: self.decode(name, value) for name, value in trial.params.items()}
        if ALPHA_RATIO in params and ALPHA in trial.user_attrs:
            params.pop(ALPHA_RATIO)
            params[self.alpha] = trial.user_attrs[ALPHA]
        return params

    def reference(self, configured: Mapping[str, Any]) -> dict[str, Any]:
        """One point of the space: the configured value where it lies in the range, else the centre.

        This is the configuration the tuner builds to validate the config and estimate curvature,
        and the point the theory seed starts from (so a searched mu is seeded at the configured mu).
        Under one of :data:`DEFAULT_RANGES` (the user gave no range) a configured positive value outside it
        is kept: it is a fact about the user's model (AdaNAGGS's default mu lies above the default mu range),
        where the default range is only the tuner's guess; the seeding widens the default mu range to hold it.
        """
        point = {}
        for name, dist in self.distributions.items():
            value = _scalar(configured.get(name))
            stored = self.encode({name: value})[name]
            kept = _contains(dist, stored) or (_is_default(dist) and _positive(stored))
            point[name] = self.decode(name, stored if kept else centre(dist))
        point.update(self.fixed)
        return point

    def contains(self, name: str, value: Any) -> bool:
        return _contains(self.distributions[name], value)

    def pinned(self, name: str, value: Any) -> SearchSpace:
        """This space with ``name`` fixed at ``value`` instead of searched."""
        dists = {n: d for n, d in self.distributions.items() if n != name}
        return replace(
            self,
            distributions=dists,
            fixed={**self.fixed, name: value},
            structured=tuple(n for n in self.structured if n != name),
        )

    def seeded(self, relative: RelativeAlpha) -> SearchSpace:
        """This space with alpha searched relative to the theory's seed (alpha must be searched)."""
        dists = {(ALPHA_RATIO if n == self.alpha else n): d for n, d in self.distributions.items()}
        dists[ALPHA_RATIO] = relative.distribution()
        return replace(self, distributions=dists, relative=relative)

    def to_json(self) -> str:
        """A canonical JSON form (sorted keys): stored in the study and compared on resume."""
        return json.dumps(
            {
                "distributions": {n: json.loads(distribution_to_json(d)) for n, d in self.distributions.items()},
                "fixed": self.fixed,
                "roles": [self.alpha, self.mu, self.gamma],
                "relative": None if self.relative is None else asdict(self.relative),
                "structured": list(self.structured),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        data = json.loads(text)
        dists = {n: json_to_distribution(json.dumps(d)) for n, d in data["distributions"].items()}
        alpha, mu, gamma = data["roles"]
        relative = None if data.get("relative") is None else RelativeAlpha(**data["relative"])
        structured = tuple(data.get("structured", ()))
        return cls(dists, data["fixed"], alpha=alpha, mu=mu, gamma=gamma, relative=relative, structured=structured)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, human-readable range)`` rows, searched parameters first."""
        rows = []
        for name, dist in self.distributions.items():
            if name == ALPHA_RATIO and self.relative is not None:
                rows.append(
                    (
                        self.alpha,
                        f"{dist.low:.4g} .. {dist.high:.4g} x the theory seed at each trial's mu and gamma (log), "
                        f"within {self.relative.low:.4g} .. {self.relative.high:.4g}",
                    )
                )
            elif isinstance(dist, CategoricalDistribution):
                rows.append((name, "one of " + ", ".join(repr(self.decode(name, c)) for c in dist.choices)))
            else:
                scale = "log" if dist.log else (f"step {dist.step:g}" if dist.step not in (None, 1) else "linear")
                rows.append((name, f"{dist.low:.4g} .. {dist.high:.4g} ({scale})"))
        rows += [(name, f"fixed {value!r}") for name, value in self.fixed.items()]
        return rows
