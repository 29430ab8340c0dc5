"""The search: which train/model fields an experiment varies, checked, expanded and planned, once.

    config, plan, notes = plan_experiment(config)   # the one entry point for a config about to run
    plan = SearchPlan.of(config)                    # for a config already expanded (a saved one)
    plan.columns        ['precision', 'seed']: the searched keys, as result-table columns
    plan.trials         one dict per trial Tune will run (grids crossed, num_samples repeats)
    plan.values("precision")   every value a train/model field takes in this experiment
    plan.max_epochs     the longest trial, the ASHA scheduler's horizon

A `search:` key names a train or model field ('lr', 'model.dropout'); its value is a grid (a
list), a distribution ({uniform|loguniform|randint|choice: [...]}) or, for precision, `auto`.
`check_search` runs inside the config's validation (bad keys and values are refused at load time,
named `search.lr[1]`); `plan_experiment` expands `auto` for the trials' device and plans.
orchestrator/param_space.py turns a plan into Tune's param_space; nothing re-derives it.
This module takes the config's sections as values, so the schema can call it without a cycle.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from cifar_tune.errors import ConfigError
from cifar_tune.precision import well_run_precisions

if TYPE_CHECKING:
    from cifar_tune.config import ExperimentConfig

SEARCHABLE_SECTIONS = ("train", "model")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
AUTO = "auto"  # `search.precision: auto`: every precision the trials' device runs well

Spec = list[Any] | dict[str, list[Any]]


# --------------------------------------------------------------------------- entries, checked at load time

def resolve_search_key(key: str, sections: Mapping[str, BaseModel]) -> tuple[str, str]:
    """'lr' -> ('train', 'lr'); 'model.dropout' -> ('model', 'dropout'). `sections` maps the
    searchable section names to the config's section objects."""
    fields = {name: type(section).model_fields for name, section in sections.items()}
    if "." in key:
        section, _, name = key.partition(".")
        if name in fields.get(section, {}):
            return section, name
    else:
        owners = [s for s, names in fields.items() if key in names]
        if len(owners) == 1:
            return owners[0], key
    known = sorted(f for names in fields.values() for f in names)
    raise ConfigError(f"search.{key}: not a train or model key; searchable keys: {', '.join(known)}")


def _check_value(base: BaseModel, field: str, value: Any, where: str) -> Any:
    """Validate one candidate value against the field it sets; returns the coerced value."""
    try:
        checked = type(base).model_validate({**base.model_dump(), field: value})
    except ValidationError as exc:
        # Reported at the search key (`search.lr[1]`), not at `train.lr`.
        messages = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        raise ConfigError(f"{where}: {'; '.join(messages)} (got {value!r})") from None
    return getattr(checked, field)


def check_search_entry(key: str, spec: Any, sections: Mapping[str, BaseModel]) -> Spec | str:
    """One `search:` entry checked against the field it sets; returns it in canonical form: a list
    of coerced values, {distribution: [coerced args]}, or AUTO (precision only)."""
    section, field = resolve_search_key(key, sections)
    base = sections[section]
    if field == "precision" and spec == AUTO:
        return AUTO  # expanded by plan_experiment, which knows the trials' device
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search.{key}: empty list (give at least one value)")
        return [_check_value(base, field, v, f"search.{key}[{i}]") for i, v in enumerate(spec)]
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
        also = " (or, for precision, auto)" if field == "precision" else ""
        raise ConfigError(f"search.{key}: expected a list of values{also} or a mapping with one of "
                          f"{', '.join(DISTRIBUTIONS)} (got {spec!r})")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
        raise ConfigError(f"search.{key}.{kind}: expected a list "
                          f"{'of values' if kind == 'choice' else '[low, high]'} (got {args!r})")
    values = [_check_value(base, field, v, f"search.{key}.{kind}[{i}]") for i, v in enumerate(args)]
    if kind != "choice":
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"search.{key}.{kind}: {key} is not numeric; use a list or "
                              f"{{choice: [...]}} (got {args!r})")
        if not values[0] < values[1]:
            raise ConfigError(f"search.{key}.{kind}: low must be below high (got {args!r})")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"search.{key}.loguniform: bounds must be positive (got {args!r})")
    return {kind: values}


def check_search(search: Mapping[str, Any], sections: Mapping[str, BaseModel]) -> dict[str, Any]:
    """Every `search:` entry in canonical form (see check_search_entry); raises ConfigError naming
    the first bad key or value."""
    return {key: check_search_entry(key, spec, sections) for key, spec in search.items()}


def sections_of(config: ExperimentConfig) -> dict[str, BaseModel]:
    return {name: getattr(config, name) for name in SEARCHABLE_SECTIONS}


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class SearchEntry:
    """One `search:` key: the field it sets, and a grid (list) or a distribution ({kind: args})."""

    section: str  # "train" or "model"
    field: str
    spec: Spec

    @property
    def is_grid(self) -> bool:
        return isinstance(self.spec, list)

    def describe(self) -> str:
        """How a sampled entry is shown before sampling: 'loguniform(0.001, 0.1)'."""
        kind, args = next(iter(self.spec.items()))  # type: ignore[union-attr]
        return f"{kind}{tuple(args)}"


@dataclass(frozen=True)
class SearchPlan:
    entries: tuple[SearchEntry, ...]
    trials: tuple[dict[str, Any], ...]
    defaults: dict[str, Any]  # every train and model field's configured value
    num_samples: int

    @classmethod
    def of(cls, config: ExperimentConfig) -> SearchPlan:
        """The plan of a config whose `search.precision: auto` (if any) is already expanded for the
        trials' device: a saved config, or `plan_experiment`'s."""
        if any(spec == AUTO for spec in config.search.values()):
            raise ValueError("search.precision: auto must be expanded for the trials' device before planning")
        sections = sections_of(config)
        entries = tuple(SearchEntry(*resolve_search_key(key, sections), spec) for key, spec in config.search.items())
        grids = [e for e in entries if e.is_grid]
        sampled = {e.field: e.describe() for e in entries if not e.is_grid}
        trials = []
        for _ in range(config.tune.num_samples):
            for combo in itertools.product(*(e.spec for e in grids)):
                trials.append({**{e.field: v for e, v in zip(grids, combo, strict=True)}, **sampled})
        defaults = {**config.model.model_dump(), **config.train.model_dump()}
        return cls(entries, tuple(trials), defaults, config.tune.num_samples)

    @property
    def columns(self) -> list[str]:
        """Result-table column names of the searched keys ('precision', 'seed', 'lr', ...)."""
        return [e.field for e in self.entries]

    def values(self, field: str) -> list[Any]:
        """Every value a train/model field can take (its configured value when not searched;
        the bounds are not values, so a continuous distribution gives [])."""
        for entry in self.entries:
            if entry.field == field:
                if entry.is_grid:
                    return list(dict.fromkeys(entry.spec))
                kind, args = next(iter(entry.spec.items()))  # type: ignore[union-attr]
                return list(args) if kind == "choice" else []
        return [self.defaults[field]]

    @property
    def max_epochs(self) -> int:
        for entry in self.entries:
            if entry.field == "epochs" and not entry.is_grid:
                return int(max(next(iter(entry.spec.values()))))  # type: ignore[union-attr]
        return int(max(self.values("epochs")))

    def searches(self, field: str) -> bool:
        return any(e.field == field for e in self.entries)


def search_value(trial_config: dict[str, Any], column: str) -> Any:
    """A searched field's value in a trial config (it sits in the train or the model section)."""
    for section in SEARCHABLE_SECTIONS:
        if column in (trial_config.get(section) or {}):
            return trial_config[section][column]
    return None


def trial_device(config: ExperimentConfig) -> str:
    """The device type trials will train on: 'cuda' when they ask for a GPU share, else 'cpu'."""
    return "cuda" if config.resources.gpus_per_trial > 0 else "cpu"


def plan_experiment(config: ExperimentConfig) -> tuple[ExperimentConfig, SearchPlan, list[str]]:
    """What every command that runs a config starts with: `search.precision: auto` expanded to the
    precisions the trials' device runs well (the returned config is a copy, and the one to save, so
    a resume runs the same trials), its plan, and one line per precision left out, saying why."""
    key = next((k for k, spec in config.search.items() if spec == AUTO), None)
    if key is None:
        return config, SearchPlan.of(config), []
    device = trial_device(config)
    kept, left_out = well_run_precisions(device)
    resolved = config.model_copy(deep=True)
    resolved.search[key] = kept
    notes = [f"search.precision: auto on {device}: running {', '.join(kept)}"]
    notes += [f"  left out {name}: {why}" for name, why in left_out.items()]
    return resolved, SearchPlan.of(resolved), notes
