"""`cifar-tune extend EXPERIMENT --seeds N`: more seeds for an experiment that already ran.

An extension is an experiment of its own inside the original's folder, `<experiment>/extend-<k>/`,
with the original's saved config except the seeds: N new ones, after every seed used so far, each
crossed with the rest of the grid as the original seeds were. It runs, fails and resumes like any
run (`cifar-tune resume <experiment>/extend-<k>`); the analysis of the original reads its trials
with the original's, and the original's results.csv is rewritten to list them all.

`until_margin` keeps adding seeds, N at a time, until every comparison with fp32 has a paired 95%
interval narrower than ±margin (`analysis.margin_pp`), or `max_seeds` seeds in all were run.

    outcome = extend_experiment("results/study", seeds=3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar_tune.analysis.load import load_experiment
from cifar_tune.analysis.summary import analyze
from cifar_tune.analysis.trials import extension_number, results_view
from cifar_tune.config import ConfigError, ExperimentConfig, load_config
from cifar_tune.names import CONFIG_FILE, ERROR, EXTENSION_PREFIX, RESULTS_FILE, UNFINISHED
from cifar_tune.orchestrator.experiment import ExperimentOutcome, run_experiment
from cifar_tune.search import SearchPlan
from cifar_tune.storage import Location


def _next_extension(location: Location) -> int:
    """k for the next extend-<k>; refuses while the last one has unfinished trials."""
    taken = [name for name in location.listdir() if name.startswith(EXTENSION_PREFIX)]
    if not taken:
        return 1
    last = max(taken, key=extension_number)
    trials = load_experiment(location / last).trials
    if trials.empty or trials["status"].isin([UNFINISHED, ERROR]).any():
        raise ConfigError(f"{location / last}: this extension has not finished; finish it with "
                          f"`cifar-tune resume {location / last}` before adding more seeds")
    return extension_number(last) + 1


def extend_experiment(path: str | Path, seeds: int, address: str | None = None, quiet: bool = False,
                      margin_pp: float | None = None) -> ExperimentOutcome:
    """Run `seeds` new seeds of the experiment at `path` (local folder or cloud URI) as the next
    extension, then rewrite the experiment's results.csv with every trial. `margin_pp` is recorded
    in the extension's config (analysis.margin_pp)."""
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: give at least 1 new seed")
    location = Location.of(path)
    if not location.is_file(CONFIG_FILE):
        raise ConfigError(f"{location}: not a cifar-tune experiment directory (no {CONFIG_FILE})")
    config = load_config(location / CONFIG_FILE)  # checked in full: it trains again, data.root included
    used = set(load_experiment(location).trials.get("seed", [])) | set(SearchPlan.of(config).values("seed"))
    first = max(int(s) for s in used) + 1 if used else 0
    k = _next_extension(location)
    raw = config.model_dump(mode="json")
    raw.update(name=f"{EXTENSION_PREFIX}{k}", storage_path=location.uri,
               search={**raw["search"], "seed": list(range(first, first + seeds))})
    raw["wandb"]["group"] = config.wandb.group_for(location.name)  # its runs join the experiment's group
    if address:
        raw["ray"]["address"] = address
    if margin_pp is not None:
        raw["analysis"]["margin_pp"] = margin_pp
    # More seeds change no precision's speed: the experiment's own timing.csv stays the measure
    # (`cifar-tune time` measures again where that is wanted).
    raw["timing"]["enabled"] = False
    outcome = run_experiment(ExperimentConfig.model_validate(raw), quiet=quiet)

    merged = load_experiment(location)
    columns = SearchPlan.of(config).columns
    columns = columns if "seed" in columns else [*columns, "seed"]
    location.write_csv(RESULTS_FILE, results_view(merged.trials, columns))
    if not quiet:
        print(f"\n{location}: {merged.trials['seed'].nunique()} seeds in all; results.csv lists every trial")
    return outcome


MIN_PAIRS = 3  # seed pairs before an interval may end the loop: two give a t interval no reviewer accepts


def _narrow_enough(comparison: Any, half: Any, margin: float, used: int) -> str:
    """Why the loop ends: every interval within the margin, naming those of zero width as what they
    are (every pair of seeds scored the same: identical results, not a measured width)."""
    identical = comparison.loc[half == 0, "precision"].tolist()
    pairs = int(comparison["n_pairs"].min())
    line = f"every comparison's 95% interval is within ±{margin:g} pp with {used} seeds"
    if len(identical) == len(comparison):
        return (f"every comparison gave identical results on all {pairs} seed pairs (each pair scored the same: "
                f"no spread, so no interval to narrow) with {used} seeds")
    line += f" (largest half-width {half[half > 0].max():.2f} pp)"
    if identical:
        line += f"; {', '.join(identical)}: identical results on every seed pair (no spread)"
    return line


def extend_until_margin(path: str | Path, step: int, max_seeds: int, address: str | None = None,
                        margin_pp: float | None = None, quiet: bool = False) -> list[str]:
    """Add `step` seeds at a time until every comparison's paired 95% interval lies within
    ±margin of its mean (half-width under the margin) or `max_seeds` seeds ran. Returns what
    happened, one line per round and one for the end."""
    location = Location.of(path)
    lines = []
    while True:
        analysis = analyze(load_experiment(location), margin_pp=margin_pp)
        margin, comparison = analysis.margin_pp, analysis.comparison
        used = analysis.experiment.trials["seed"].nunique()
        if comparison.empty:
            lines.append("no comparison with fp32 to narrow (one precision, or no finished fp32 trial): nothing to do")
            return lines
        half = (comparison["ci_high_pp"] - comparison["ci_low_pp"]) / 2
        pairs = int(comparison["n_pairs"].min())
        narrow = bool((half < margin).all())
        if narrow and pairs >= MIN_PAIRS:
            lines.append(_narrow_enough(comparison, half, margin, used))
            return lines
        too_few = f"{pairs} seed pair(s), and an interval needs at least {MIN_PAIRS}"
        if used >= max_seeds:
            why = too_few if pairs < MIN_PAIRS else f"largest half-width {half.max():.2f} pp, margin ±{margin:g} pp"
            lines.append(f"stopped at --max-seeds {max_seeds}: {why}; no verdict to trust yet")
            return lines
        add = min(step, max_seeds - used)
        why = too_few if pairs < MIN_PAIRS else f"largest half-width {half.max():.2f} pp > {margin:g}"
        lines.append(f"{used} seeds: {why}; adding {add}")
        if not quiet:
            print(lines[-1])
        extend_experiment(location.uri, add, address=address, quiet=quiet, margin_pp=margin_pp)
