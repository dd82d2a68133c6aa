"""Where a study lives, how it is named, resumed and sampled, and its trials as a table."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from typing import Any

from dpipe.errors import DpipeError, SpecError, StorageError
from dpipe.spec.base import redact_url
from dpipe.spec.load import redacted
from dpipe.spec.tune import TuneSpec, is_url

#: The job sections a study's trials depend on (its rows and its training), for the study's name.
STUDY_SECTIONS = ("source", "id_columns", "checks", "quarantine", "features", "label", "split", "train")
#: Trial states as the trials table writes them.
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def default_study(job: Any) -> str:
    """``<job name>-<digest>``: the digest covers what the trials depend on (rows, features, split,
    training, and the search itself), so rerunning the job resumes its study and changing any of
    them starts a new one. ``n_trials``, ``timeout`` and where things are kept are left out."""
    spec = redacted(job)
    data = {"job": {k: spec.get(k) for k in STUDY_SECTIONS}, "tune": job.tune.identity()}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return f"{job.name}-{digest[:12]}"


def storage_url(storage: str) -> str:
    """An SQLAlchemy URL: URLs unchanged, a path as an SQLite file (its folder created)."""
    if is_url(storage):
        return storage
    path = os.path.abspath(os.path.expanduser(storage))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"tune.storage: cannot create the folder of {storage!r}: {exc.strerror or exc}",
            hint="give `tune.storage` a writable path, or an SQLAlchemy URL",
        ) from exc
    return f"sqlite:///{path}"


def trials_table(study: Any) -> list[dict[str, Any]]:
    """The study's trials, in order: number, params, value, state, rounds, best_iteration, seconds,
    boost_seconds (and ``error`` for a failed one)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {
            "number": t.number,
            "params": dict(t.params),
            "value": None if t.value is None or not math.isfinite(t.value) else float(t.value),
            "state": STATES.get(t.state.name, t.state.name.lower()),
            "rounds": attrs.get("rounds"),
            "best_iteration": attrs.get("best_iteration"),
            "seconds": attrs.get("seconds"),
            "boost_seconds": attrs.get("boost_seconds"),
        }
        if "error" in attrs:
            row["error"] = attrs["error"]
        rows.append(row)
    return rows


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise DpipeError(
            "tune: hyperparameter tuning needs the `optuna` package, which is not installed",
            hint="pip install 'dpipe[tune]' (on the client; the workers need only XGBoost)",
        ) from exc
    # Optuna's messages go to the `optuna` logger like every library's, not to its own stderr handler.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


def open_study(optuna: Any, spec: TuneSpec, name: str, url: str, direction: str) -> Any:
    """Create or resume the study; trials a dead process left running are marked failed."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        storage = optuna.storages.RDBStorage(url)
        try:
            study_id: int | None = storage.get_study_id_from_name(name)
        except KeyError:
            study_id = None
        if study_id is not None:
            stale = [t for t in storage.get_all_trials(study_id, deepcopy=False) if t.state.name == "RUNNING"]
            for t in stale:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                storage.set_trial_user_attr(trial_id, "error", "interrupted: the tuning process stopped mid-trial")
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        done = len(storage.get_all_trials(study_id, deepcopy=False)) if study_id is not None else 0
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            direction=direction,
            sampler=_sampler(optuna, spec, seed=spec.seed + done),
            pruner=_pruner(optuna, spec),
        )
    except (SQLAlchemyError, OSError, ImportError) as exc:
        # ImportError: the URL names a database whose driver is not installed (psycopg2, ...).
        raise StorageError(
            f"tune.storage: cannot open the study storage {redact_url(url)}: {redact_url(str(exc).splitlines()[0])}",
            hint="give `tune.storage` a writable SQLite path, or the URL of a reachable database with its driver installed",
        ) from exc
    stored = study.direction.name.lower()
    if stored != direction:
        raise SpecError(
            f"tune: study {name!r} in {redact_url(url)} was created to {stored} and this spec would {direction}",
            hint="give `tune.study` a new name (or leave it out: the default name follows the spec)",
        )
    return study


# A resumed study's sampler is seeded past the trials it already has, so it does not propose the
# first session's random starting points again.
SAMPLERS: dict[str, Callable[[Any, int], Any]] = {
    "tpe": lambda optuna, seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda optuna, seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNERS: dict[str, Callable[[Any, Any], Any]] = {
    "median": lambda optuna, p: optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials),
    "percentile": lambda optuna, p: optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials),
}


def _sampler(optuna: Any, spec: TuneSpec, *, seed: int) -> Any:
    return SAMPLERS[spec.sampler](optuna, seed)


def _pruner(optuna: Any, spec: TuneSpec) -> Any:
    return PRUNERS[spec.pruning.pruner](optuna, spec.pruning) if spec.pruning.enabled else optuna.pruners.NopPruner()
