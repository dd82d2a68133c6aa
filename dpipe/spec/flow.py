"""A flow spec (``flow.yaml``): dpipe jobs as named steps, run in the order their data needs.

::

    name: flights-flow
    vars: {first_month: "1"}          # ${first_month} in the steps' jobs (--var and the environment win)
    cluster: {n_workers: 2}           # the one cluster every step runs on (default: a LocalCluster)
    max_parallel: 2                   # steps at the same time (default: one per worker)
    alerts:
      - {on: [failure], command: "notify-send 'flow failed'"}
      - {on: [failure, drift], webhook: "https://hooks.example.com/dpipe"}
    steps:
      features:
        job: flights-features.yaml    # a job spec, relative to this file, or the job inline
      train:
        job: flights-train.yaml
        set: {train.num_boost_round: 200}
        retries: 2                    # runtime failures (not spec errors) are retried
        retry_delay: 30s              # then 60s: doubled each time (backoff: 2)
        timeout: 2h
      score:
        job:
          kind: predict
          bundle: ${steps.train.output}
          source: {uri: "${steps.features.output}", format: delta}
          output: {format: duckdb, uri: runs/scores.duckdb, table: scores}

A step needs every step it names in ``needs:`` and every step whose output it references
(``${steps.NAME.output}``, or ``models:/NAME@ALIAS`` of a model a step registers).
Imports neither Dask nor pandas.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.incremental import parse_duration
from dpipe.spec.models import ClusterSpec

#: A step's name: what ``${steps.NAME.output}`` and ``--from NAME`` use.
STEP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
#: What an alert is raised on.
Event = Literal["failure", "success", "drift"]


def seconds(value: Any, where: str) -> float:
    """A duration given as seconds (``30``) or with a unit (``30s``, ``5m``, ``2h``)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a duration; write e.g. 30s, 5m or 2h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{where}: {value!r} is negative")
        return float(value)
    return parse_duration(str(value), where).total_seconds()


class AlertSpec(Strict):
    """What a flow run tells the world: a command run, or a JSON summary POSTed to a webhook.

    A command is run by the shell with the run's summary (JSON) on its standard input and
    ``DPIPE_FLOW``, ``DPIPE_FLOW_STATUS`` and ``DPIPE_FLOW_SUMMARY`` (the summary's path) in its
    environment. A webhook gets the summary as the body of a POST. An alert that fails is logged;
    it never changes the flow's result.
    """

    on: list[Event] = Field(default=["failure"], min_length=1)
    command: str | None = Field(default=None, min_length=1)
    webhook: str | None = Field(default=None, pattern=r"^https?://")
    #: fields sent as HTTP headers with the webhook (a token, for example; values are secrets).
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = 30.0

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return seconds(value, "timeout")

    @model_validator(mode="after")
    def _one_target(self):
        if (self.command is None) == (self.webhook is None):
            raise ValueError("an alert has exactly one of `command` or `webhook`")
        return self


class StepSpec(Strict):
    """One step: a dpipe job of any kind, with what it needs and how hard to try."""

    #: A job spec file (relative to the flow file) or a job given inline.
    job: str | dict[str, Any]
    #: Values set in the job before it is validated, as ``dpipe run --set`` does:
    #: ``{train.num_boost_round: 50}``.
    set: dict[str, Any] = Field(default_factory=dict)
    #: Steps that must succeed first (besides those whose outputs the job references).
    needs: list[str] = Field(default_factory=list)
    #: Attempts after the first when the step fails at run time (crashed, killed, timed out).
    retries: int = Field(default=0, ge=0, le=20)
    retry_delay: float = 10.0
    #: Each retry waits ``backoff`` times longer than the one before.
    backoff: float = Field(default=2.0, ge=1.0, le=10.0)
    #: The longest one attempt may take; then it is stopped and counts as failed.
    timeout: float | None = None

    @field_validator("retry_delay", "timeout", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> float | None:
        return None if value is None else seconds(value, info.field_name)

    @field_validator("job")
    @classmethod
    def _job(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("`job` is a job spec's path or the job itself")
        return value


class FlowSpec(Strict):
    """A whole flow. Build it from YAML with :func:`dpipe.flow.load_flow`."""

    name: str = Field(default="flow", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: Values of ``${NAME}`` in the steps' jobs; ``--var NAME=VALUE`` and the environment win.
    vars: dict[str, str] = Field(default_factory=dict)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    #: Steps run at the same time at most (default: the cluster's number of workers).
    max_parallel: int | None = Field(default=None, ge=1, le=64)
    #: The folder that keeps the runs' records, logs and the last state of each step
    #: (default: ``.dpipe/flows/<name>`` in the working directory).
    state: str | None = Field(default=None, min_length=1)
    alerts: list[AlertSpec] = Field(default_factory=list)
    steps: dict[str, StepSpec] = Field(min_length=1)

    @field_validator("vars", mode="before")
    @classmethod
    def _text_vars(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    @field_validator("steps")
    @classmethod
    def _step_names(cls, steps: dict[str, StepSpec]) -> dict[str, StepSpec]:
        bad = [name for name in steps if not STEP_NAME.match(name)]
        if bad:
            raise ValueError(f"step names {bad} are not allowed; use letters, digits, '_' and '-' (not first)")
        return steps
