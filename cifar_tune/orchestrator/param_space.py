"""The search plan in Ray Tune's terms: the param_space a Tuner varies.

A trial's config is the full experiment config with each searched field swapped for a Tune
domain: `tune.grid_search` for a list, `tune.uniform` / `loguniform` / `randint` / `choice` for a
distribution. Which fields, and what they may take, was decided once in `cifar_tune.search`.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from cifar_tune.config import ExperimentConfig
from cifar_tune.search import SearchEntry, SearchPlan


def tune_domain(entry: SearchEntry) -> Any:
    if entry.is_grid:
        return tune.grid_search(list(entry.spec))
    kind, args = next(iter(entry.spec.items()))  # type: ignore[union-attr]
    if kind == "choice":
        return tune.choice(list(args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*args)


def param_space(config: ExperimentConfig, plan: SearchPlan) -> dict[str, Any]:
    """The trial config Tune varies: the experiment config with searched fields as Tune domains."""
    space = config.model_dump(mode="json", exclude={"search"})
    for entry in plan.entries:
        space[entry.section][entry.field] = tune_domain(entry)
    return space

