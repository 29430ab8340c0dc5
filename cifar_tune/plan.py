"""The search plan: what an experiment will run, derived once from a validated config.

    config, plan, notes = plan_experiment(config)   # the one entry point: `auto` expanded, then planned
    plan = SearchPlan.of(config)                    # for a config already expanded (a saved one)
    plan.columns        ['precision', 'seed']: the searched keys, as result-table columns
    plan.trials         one dict per trial Tune will run (grids crossed, num_samples repeats)
    plan.values("precision")   every value a train/model field takes in this experiment
    plan.max_epochs     the longest trial, the ASHA scheduler's horizon

The orchestrator turns `plan.entries` into Tune's param_space; the preflight checks every
precision in it; results and analysis use `plan.columns`. Nothing re-derives it from the config.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from cifar_tune.config import AUTO, ExperimentConfig, resolve_search_key
from cifar_tune.precision import well_run_precisions


@dataclass(frozen=True)
class SearchEntry:
    """One `search:` key: the field it sets, and a grid (list) or a distribution ({kind: args})."""

    section: str  # "train" or "model"
    field: str
    spec: list[Any] | dict[str, list[Any]]

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
        entries = tuple(SearchEntry(*resolve_search_key(key), spec) for key, spec in config.search.items())
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
    for section in ("train", "model"):
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
