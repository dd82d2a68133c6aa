"""A flow checked as a whole: every step's job, what each makes, and the order the data needs.

:func:`load_flow` reads ``flow.yaml`` and reports every problem at once, before anything runs:
a job that is not valid (its own error, under the step's name), an unknown step in ``needs:``, a
reference to a step or an output that does not exist, a cycle, and a source reading a step's
output that is not a table of its ``format`` (or a bundle where a table is read).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dpipe.errors import SpecError
from dpipe.spec.flow import FlowSpec, StepSpec
from dpipe.spec.load import apply_override, job_from_dict, problems_error, read_yaml, spec_error_from

#: ``${steps.NAME.output}``: a step's output where a later step reads it.
REFERENCE = re.compile(r"\$\{steps\.([^.}]+)\.([^}]+)\}")
#: ``${NAME}`` / ``${NAME:-default}``: a variable (the flow's ``vars``, ``--var``, the environment).
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: ``models:/NAME`` at the start of a value: a registered model.
MODEL_URI = re.compile(r"^models:/([^/@]+)")
#: What a step makes, in words.
WHAT = {"bundle": "a model bundle", "table": "a table", "model": "a registered model", "report": "a drift report"}
#: What a step makes, by its job's kind.
MAKES = {"train": "bundle", "features": "table", "predict": "table", "register": "model", "monitor": "report"}


@dataclass(frozen=True)
class Output:
    """What a step makes: ``kind`` (bundle, table, model, report), a table's ``format``, and
    its URI when the spec says it (a registered version's is known only once it ran)."""

    kind: str
    format: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class Step:
    name: str
    spec: StepSpec
    #: The job as a mapping, ``set:`` applied, references and variables not yet replaced.
    data: dict[str, Any] = field(repr=False)
    #: Where its job came from: ``flow.yaml: step 'train'`` (and the job file).
    origin: str
    kind: str
    makes: Output
    #: Every step that must succeed first: ``needs:`` and those it references.
    needs: tuple[str, ...]
    #: The steps whose outputs the job references, with where (``source.uri``).
    reads: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Flow:
    """A valid flow: its steps in an order that runs every step after those it needs."""

    spec: FlowSpec
    path: Path
    steps: dict[str, Step]
    #: The values of ``${NAME}`` the steps' jobs were checked with.
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def downstream(self, name: str) -> list[str]:
        """``name`` and every step that needs it, directly or not, in run order."""
        found = {name}
        for step in self.steps.values():
            if any(n in found for n in step.needs):
                found.add(step.name)
        return [s for s in self.steps if s in found]

    def upstream(self, names: list[str]) -> list[str]:
        """Every step that one of ``names`` needs, directly or not, and is not among them."""
        found: set[str] = set()
        todo = [need for n in names for need in self.steps[n].needs]
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo.extend(self.steps[need].needs)
        return [s for s in self.steps if s in found and s not in names]

    def resolve(self, step: Step, outputs: Mapping[str, str]) -> dict[str, Any]:
        """The step's job with each ``${steps.X.output}`` replaced by ``outputs[X]`` (variables
        stay: the job is loaded where they are set)."""
        return _replace_references(step.data, lambda name, attr: outputs[name])

    def output_of(self, step: Step, outputs: Mapping[str, str]) -> str | None:
        """What later steps read of ``step``: its output's URI as its spec writes it (with
        references and variables replaced), so that a rerun reads exactly the same value; ``None``
        when only the run can tell (the version a ``register`` step made)."""
        if step.makes.uri is None:
            return None
        values = {**os.environ, **self.vars}
        return _with_vars(_replace_references(step.makes.uri, lambda name, attr: outputs[name]), values)

    def dot(self, states: Mapping[str, str] | None = None) -> str:
        """The flow as a Graphviz DOT graph, each step coloured by its state."""
        colours = {"succeeded": "palegreen", "skipped": "lightblue", "failed": "salmon", "blocked": "lightgrey"}
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
        for step in self.steps.values():
            state = (states or {}).get(step.name)
            label = f"{step.name}\\n{step.kind}" + (f"\\n{state}" if state else "")
            lines.append(f'  "{step.name}" [label="{label}", fillcolor="{colours.get(state or "", "white")}"];')
        for step in self.steps.values():
            lines.extend(f'  "{need}" -> "{step.name}";' for need in step.needs)
        lines.append("}")
        return "\n".join(lines)


def load_flow(path: str | os.PathLike, *, vars: Mapping[str, str] | None = None) -> Flow:
    """Read and check a flow spec; ``vars`` (``--var``) win over the environment and ``vars:``."""
    path = Path(path)
    data = read_yaml(path, "flow spec")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a flow spec is a mapping with `steps:`", hint="see docs/flows.md")
    data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem))
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, str(path), FlowSpec) from None
    values = {**spec.vars, **{k: os.environ[k] for k in spec.vars if k in os.environ}, **(vars or {})}
    return check_flow(spec, path, values)


def check_flow(spec: FlowSpec, path: Path, values: Mapping[str, str]) -> Flow:
    """Every step's job and the graph between them; one :class:`SpecError` with every problem."""
    problems: list[tuple[str, str]] = []
    raw: dict[str, tuple[dict[str, Any], str]] = {}
    for name, step in spec.steps.items():
        try:
            raw[name] = _job_data(step, name, path)
        except SpecError as exc:
            problems.append((f"steps.{name}.job", exc.message))
    # What each step makes comes from its job as written: the outputs of others are not needed.
    makes = {name: _makes(data) for name, (data, _) in raw.items()}
    registers = {name: _registers(data) for name, (data, _) in raw.items()}
    steps: dict[str, Step] = {}
    for name, (data, origin) in raw.items():
        where = f"steps.{name}"
        needs = list(spec.steps[name].needs)
        for need in needs:
            if need not in spec.steps:
                problems.append((f"{where}.needs", _unknown(need, spec.steps)))
            elif need == name:
                problems.append((f"{where}.needs", "a step cannot need itself"))
        reads: list[tuple[str, str]] = []
        for loc, producer, attr, container in _references(data):
            if producer not in spec.steps:
                problems.append(
                    (f"{where}.job.{loc}", f"references ${{steps.{producer}.{attr}}}: {_unknown(producer, spec.steps)}")
                )
                continue
            if attr != "output":
                problems.append((f"{where}.job.{loc}", f"${{steps.{producer}.{attr}}}: a step has only `output`"))
                continue
            if producer == name:
                problems.append((f"{where}.job.{loc}", "a step cannot read its own output"))
                continue
            if producer in makes:
                mismatch = _mismatch(loc, container, makes[producer], producer)
                if mismatch:
                    problems.append((f"{where}.job.{loc}", mismatch))
            reads.append((producer, loc))
            needs.append(producer)
        for model in _models_read(data):
            needs.extend(other for other, names in registers.items() if model in names and other != name)
        job_data = _replace_references(data, lambda producer, attr: _placeholder(makes.get(producer), producer))
        try:
            job = job_from_dict(_with_vars(job_data, values), origin=origin)
        except SpecError as exc:
            problems.append((where, exc.message.replace("\n", "\n    ")))
            continue
        kind = getattr(job, "kind", "train")
        steps[name] = Step(
            name=name,
            spec=spec.steps[name],
            data=data,
            origin=origin,
            kind=kind,
            makes=makes[name],
            needs=tuple(dict.fromkeys(n for n in needs if n in spec.steps and n != name)),
            reads=tuple(reads),
        )
    order, cycle = _order(steps)
    if cycle:
        problems.append(("steps", "the steps need each other in a cycle: " + " -> ".join(cycle)))
    else:
        steps = {n: steps[n] for n in order}
    if problems:
        raise problems_error(
            f"{path}: invalid flow",
            problems,
            hint="fix the steps named above; `dpipe flow validate FLOW` re-checks without running",
        )
    return Flow(spec, path, steps, dict(values))


# -- jobs -------------------------------------------------------------------------------------------
def _job_data(step: StepSpec, name: str, flow_path: Path) -> tuple[dict[str, Any], str]:
    """The step's job as a mapping with ``set:`` applied, and where it came from."""
    origin = f"{flow_path}: step {name!r}"
    if isinstance(step.job, str):
        job_path = Path(step.job)
        if not job_path.is_absolute():
            job_path = flow_path.parent / job_path
        try:
            data = read_yaml(job_path, "job spec")
        except SpecError as exc:
            raise SpecError(f"{origin}: {exc.message}", hint="job files are found relative to the flow file") from exc
        if not isinstance(data, dict):
            raise SpecError(f"{origin}: {job_path} is not a job spec (a mapping of sections)")
        data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "_", job_path.stem))
        origin = f"{origin} ({job_path})"
    else:
        data = copy.deepcopy(step.job)
        data.setdefault("name", name)
    for key, value in step.set.items():
        apply_override(data, f"{key}={json.dumps(value)}")  # JSON is YAML: the value as given
    return data, origin


def _makes(data: Mapping[str, Any]) -> Output:
    kind = data.get("kind", "train")
    what = MAKES.get(kind, "unknown")
    output = data.get("output")
    if what == "model":
        return Output("model")  # its version is known once it ran
    if isinstance(output, str):
        return Output(what, "parquet" if what == "table" else None, output)
    if isinstance(output, dict):
        fmt = output.get("format", "parquet") if what == "table" else None
        return Output(what, fmt, output.get("uri"))
    return Output(what)


def _registers(data: Mapping[str, Any]) -> tuple[str, ...]:
    registry = data.get("registry")
    if data.get("kind", "train") in ("train", "register") and isinstance(registry, dict) and registry.get("name"):
        return (str(registry["name"]),)
    return ()


def _models_read(data: Any) -> Iterator[str]:
    """The model names of every ``models:/NAME...`` value in the job."""
    if isinstance(data, dict):
        for value in data.values():
            yield from _models_read(value)
    elif isinstance(data, list):
        for value in data:
            yield from _models_read(value)
    elif isinstance(data, str):
        match = MODEL_URI.match(data)
        if match:
            yield match.group(1)


def _placeholder(made: Output | None, producer: str) -> str:
    """What a reference is checked with: the output's URI when the spec says it."""
    if made is None:
        return f"step-{producer}-output"
    if made.uri:
        return made.uri
    return f"models:/{producer}/latest" if made.kind == "model" else f"step-{producer}-output"


# -- references -------------------------------------------------------------------------------------
def _references(data: Any, loc: str = "", container: Any = None) -> Iterator[tuple[str, str, str, Any]]:
    """``(location, producer, attribute, the mapping holding the value)`` of every reference."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _references(value, f"{loc}.{key}" if loc else str(key), data)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _references(value, f"{loc}[{i}]", container)
    elif isinstance(data, str):
        for match in REFERENCE.finditer(data):
            yield loc, match.group(1), match.group(2), container


def _replace_references(data: Any, value_of: Any) -> Any:
    if isinstance(data, dict):
        return {k: _replace_references(v, value_of) for k, v in data.items()}
    if isinstance(data, list):
        return [_replace_references(v, value_of) for v in data]
    if isinstance(data, str):
        return REFERENCE.sub(lambda m: value_of(m.group(1), m.group(2)), data)
    return data


def _with_vars(data: Any, values: Mapping[str, str]) -> Any:
    """``${NAME}`` replaced where ``values`` has ``NAME``; other variables are left to the environment."""
    if isinstance(data, dict):
        return {k: _with_vars(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [_with_vars(v, values) for v in data]
    if isinstance(data, str) and "${" in data:
        return VARIABLE.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), data)
    return data


def _mismatch(loc: str, container: Any, made: Output, producer: str) -> str | None:
    """Why the value at ``loc`` cannot hold ``producer``'s output, if it cannot."""
    key = loc.rsplit(".", 1)[-1]
    parent = loc.rsplit(".", 1)[0] if "." in loc else ""
    reads_table = key == "uri" and parent.rsplit(".", 1)[-1].split("[")[0] in ("source", "right")
    reads_model = key == "bundle" or loc in ("pipeline_from", "pipeline_from.uri")
    if made.kind == "report":
        return f"step {producer!r} writes a drift report, which no step reads; reference a table, a bundle or a model"
    if made.kind == "unknown":
        return f"step {producer!r} makes nothing another step can read"
    if reads_table:
        if made.kind != "table":
            return (
                f"reads step {producer!r}'s output as a table, but it is {WHAT[made.kind]}; a source reads"
                " the output of a features or predict step"
            )
        given = container.get("format") if isinstance(container, dict) else None
        if given is not None and given != made.format:
            return f"reads step {producer!r}'s output as {given}, but the step writes {made.format}"
        if given is None and made.format not in ("parquet", None):
            return f"step {producer!r} writes {made.format}: add `format: {made.format}` beside this `uri`"
    if reads_model and made.kind not in ("bundle", "model"):
        return f"reads step {producer!r}'s output as a model bundle, but it is {WHAT[made.kind]}"
    return None


def _unknown(name: str, steps: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(steps), n=1)
    return f"no step {name!r}; the steps are {list(steps)}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _order(steps: Mapping[str, Step]) -> tuple[list[str], list[str]]:
    """A run order (the flow's own order where the needs allow), or a cycle."""
    order: list[str] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [n for n in pending if all(need in done or need not in steps for need in steps[n].needs)]
        if not ready:
            return order, _cycle(steps, pending)
        order.extend(ready)
        done.update(ready)
        pending = [n for n in pending if n not in done]
    return order, []


def _cycle(steps: Mapping[str, Step], pending: list[str]) -> list[str]:
    """One cycle among ``pending`` steps, as a path that returns to its start."""
    path: list[str] = []
    node = pending[0]
    while node not in path:
        path.append(node)
        node = next(n for n in steps[node].needs if n in pending)  # a pending step waits on another
    return [*path[path.index(node) :], node]
