"""The search space: config `search:` entries -> Ray Tune's param_space, and back.

A search key names a field of `train` or `model` (`precision`, `seed`, `lr`,
`dropout`, or dotted as `train.lr`). Its value is a list (grid search) or a
one-key mapping `{uniform|loguniform|randint|choice: [...]}` sampled
`tune.num_samples` times. Every value is checked against the field it sets,
so `search.lr: [0.1, -1]` fails at load time, not in trial 2.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cifar_tune.orchestrator.config import (
    DISTRIBUTIONS,
    ConfigError,
    ModelConfig,
    TrainConfig,
)

if TYPE_CHECKING:
    from cifar_tune.orchestrator.config import ExperimentConfig

SECTIONS = {"train": TrainConfig, "model": ModelConfig}


def resolve_key(key: str) -> tuple[str, str]:
    """'lr' -> ('train', 'lr'); 'model.dropout' -> ('model', 'dropout')."""
    if "." in key:
        section, _, field = key.partition(".")
        if section in SECTIONS and field in SECTIONS[section].model_fields:
            return section, field
    else:
        owners = [s for s, cls in SECTIONS.items() if key in cls.model_fields]
        if len(owners) == 1:
            return owners[0], key
    known = sorted(f for cls in SECTIONS.values() for f in cls.model_fields)
    raise ConfigError(f"search.{key}: not a train or model key; searchable keys: {', '.join(known)}")


def _check_value(config: ExperimentConfig, section: str, field: str, value: Any, where: str) -> Any:
    """Validate one candidate value against its field; returns the coerced value."""
    base = getattr(config, section).model_dump()
    try:
        checked = SECTIONS[section].model_validate({**base, field: value})
    except ValidationError as exc:
        # Report the error at the search key (`search.lr[1]`), not at `train.lr`.
        messages = [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
        raise ConfigError(f"{where}: {'; '.join(messages)} (got {value!r})") from None
    return getattr(checked, field)


def validate_search(config: ExperimentConfig) -> None:
    """Check every search entry and coerce its values in place (YAML '1e-3' -> 1e-3)."""
    for key, spec in list(config.search.items()):
        section, field = resolve_key(key)
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"search.{key}: empty list (give at least one value)")
            config.search[key] = [
                _check_value(config, section, field, v, f"search.{key}[{i}]") for i, v in enumerate(spec)
            ]
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS:
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
                raise ConfigError(f"search.{key}.{kind}: expected a list "
                                  f"{'of values' if kind == 'choice' else '[low, high]'} (got {args!r})")
            values = [_check_value(config, section, field, v, f"search.{key}.{kind}[{i}]")
                      for i, v in enumerate(args)]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if kind != "choice" and not numeric:
                raise ConfigError(f"search.{key}.{kind}: {key} is not numeric; use a list or "
                                  f"{{choice: [...]}} (got {args!r})")
            if kind != "choice" and not values[0] < values[1]:
                raise ConfigError(f"search.{key}.{kind}: low must be below high (got {args!r})")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"search.{key}.loguniform: bounds must be positive (got {args!r})")
            config.search[key] = {kind: values}
        else:
            raise ConfigError(
                f"search.{key}: expected a list of values or a mapping with one of "
                f"{', '.join(DISTRIBUTIONS)} (got {spec!r})"
            )


def _tune_domain(spec: Any) -> Any:
    from ray import tune

    if isinstance(spec, list):
        return tune.grid_search(spec)
    kind, args = next(iter(spec.items()))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint, "choice": lambda *a: tune.choice(list(a))}[kind](*args)


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """The trial config Tune varies: the full experiment config with search keys swapped for domains."""
    space = config.model_dump(mode="json", exclude={"search"})
    for key, spec in config.search.items():
        section, field = resolve_key(key)
        space[section][field] = _tune_domain(spec)
    return space


def search_columns(config: ExperimentConfig) -> list[str]:
    """Result-table column names of the searched keys ('precision', 'seed', 'lr', ...)."""
    return [resolve_key(k)[1] for k in config.search]


def expand_trials(config: ExperimentConfig) -> list[dict[str, Any]]:
    """What Tune will run: grids crossed, repeated num_samples times; distributions shown as text."""
    grids = {k: v for k, v in config.search.items() if isinstance(v, list)}
    sampled = {k: f"{next(iter(v))}{tuple(next(iter(v.values())))}" for k, v in config.search.items()
               if isinstance(v, dict)}
    trials = []
    for _ in range(config.tune.num_samples):
        for combo in itertools.product(*grids.values()):
            trial = {resolve_key(k)[1]: v for k, v in zip(grids, combo)}
            trial.update({resolve_key(k)[1]: v for k, v in sampled.items()})
            trials.append(trial)
    return trials


def searched_values(config: ExperimentConfig, field: str) -> list[Any]:
    """Every value a train/model field can take in this experiment (its default when not searched)."""
    for key, spec in config.search.items():
        section, name = resolve_key(key)
        if name == field:
            if isinstance(spec, list):
                return list(dict.fromkeys(spec))
            kind, args = next(iter(spec.items()))
            return list(args) if kind == "choice" else []
    section = "train" if field in TrainConfig.model_fields else "model"
    return [getattr(getattr(config, section), field)]
