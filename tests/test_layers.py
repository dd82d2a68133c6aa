"""The layers hold: data flows spec -> runner -> io -> pipeline -> train -> sinks, never back.

Checked two ways: statically, from every ``import`` in the package (function-level imports
included, since they run too), and for real, in a fresh interpreter that loads and validates the
example jobs and must not have imported Dask, pandas or pyarrow on the way.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dpipe"

_COMPUTE = ("dask", "distributed", "pandas", "numpy", "pyarrow", "xgboost")
_ABOVE_IO = ("dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.train", "dpipe.placement", "dpipe.plan")
_RUNNERS = ("dpipe.stages", "dpipe.runner", "dpipe.cli", "dpipe.bundle", "dpipe.cluster")

#: package -> modules it may never import.
FORBIDDEN = {
    "dpipe.spec": (*_COMPUTE, "dpipe.io", *_ABOVE_IO, *_RUNNERS),
    "dpipe.io": (*_ABOVE_IO, *_RUNNERS),
    "dpipe.ops": ("dpipe.io", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    "dpipe.pipeline": ("dpipe.io", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    "dpipe.collect": (*_COMPUTE, "dpipe.io", *_ABOVE_IO, *_RUNNERS),
    "dpipe.errors": ("dpipe",),
    # Training and placement work on frames they are given: no I/O, no checks, no plan.
    "dpipe.train": ("dpipe.io", "dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    "dpipe.placement": ("dpipe.io", "dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    "dpipe.quality": ("dpipe.ops", "dpipe.pipeline", "dpipe.train", "dpipe.placement", "dpipe.plan", *_RUNNERS),
    "dpipe.plan": ("dpipe.placement", *_RUNNERS),
    "dpipe.manifest": (*_COMPUTE, "dpipe.io", *_ABOVE_IO, *_RUNNERS),
    # The split and the measures of predictions are functions of the rows they are given.
    "dpipe.split": ("dpipe.io", "dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    "dpipe.metrics": ("dpipe.io", *_ABOVE_IO, *_RUNNERS),
    "dpipe.evaluation": ("dpipe.io", *_ABOVE_IO, *_RUNNERS),
    "dpipe.drift": ("dpipe.io", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    # Restarting training: checkpoints on any store (dpipe.io.fs), placement and training; no plan.
    "dpipe.resume": ("dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", *_RUNNERS),
    # Keeping the rows read: a decision over an opened source and the cluster; no ops, no plan.
    "dpipe.keep": (
        "dpipe.ops",
        "dpipe.pipeline",
        "dpipe.quality",
        "dpipe.train",
        "dpipe.placement",
        "dpipe.plan",
        *_RUNNERS,
    ),
    "dpipe.resumable": ("dpipe.ops", "dpipe.pipeline", "dpipe.quality", "dpipe.plan", "dpipe.placement", *_RUNNERS),
    # Flows run jobs as processes: they read specs and start (or reach) a cluster, nothing else.
    "dpipe.flow": ("dpipe.io", *_ABOVE_IO, "dpipe.stages", "dpipe.runner", "dpipe.bundle", *_COMPUTE),
    "dpipe.integrations": ("dpipe.io", *_ABOVE_IO, "dpipe.stages", "dpipe.runner", "dpipe.bundle"),
}

#: (importing module, imported module): the few crossings that are part of the design.
ALLOWED = {
    # A custom op named in a spec is checked to subclass dpipe.ops.Op when the job loads; only
    # specs that name one import it (and the user's module imports dpipe.ops anyway).
    ("dpipe.spec.custom", "dpipe.ops.base"),
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_layer_imports_a_layer_above_it():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for package, forbidden in FORBIDDEN.items():
            if not _within(module, package):
                continue
            for name in sorted(_imports(path)):
                hit = next((f for f in forbidden if _within(name, f) and not _within(name, package)), None)
                if (
                    hit
                    and (module, name) not in ALLOWED
                    and not any(_within(name, a) for m, a in ALLOWED if m == module)
                ):
                    problems.append(f"{module} imports {name} (the layer {package} may not import {hit})")
    assert not problems, "\n".join(problems)


def test_the_static_check_sees_function_level_and_relative_imports(tmp_path):
    probe = tmp_path / "dpipe" / "spec" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    import dask.dataframe\n    from .models import JobSpec\n    from .. import io\n")
    found = _imports(probe, root=tmp_path)
    assert {"dask.dataframe", "dpipe.spec.models.JobSpec", "dpipe.io"} <= found


@pytest.mark.parametrize("job", ["jobs/quickstart.yaml", "jobs/flights.yaml"])
def test_loading_and_validating_a_job_imports_no_dataframe_library(job):
    code = (
        "import json, sys\n"
        "import dpipe.spec\n"
        f"dpipe.spec.load_job({job!r})\n"
        f"print(json.dumps(sorted(m for m in {list(_COMPUTE)!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_planning_a_job_reads_schemas_without_importing_dask_dataframe(tmp_path):
    """`dpipe validate` plans the job from the files' footers: building the Dask frame (and
    importing dask.dataframe, about a second) waits until a stage reads it."""
    data = tmp_path / "events" / "month=01"
    data.mkdir(parents=True)
    code = (
        "import json, sys\n"
        "import pandas as pd\n"
        f"pd.DataFrame({{'x': [1.0, 2.0, 3.0, 4.0], 'y': [0, 1, 0, 1]}}).to_parquet({str(data / 'a.parquet')!r})\n"
        "import dpipe\n"
        "from dpipe.plan import plan\n"
        "job = dpipe.job_from_dict({'name': 'p', 'source': {'uri': "
        f"{str(tmp_path / 'events')!r}, 'format': 'parquet'}}, 'label': {{'column': 'y'}},"
        f" 'output': {{'uri': {str(tmp_path / 'out')!r}}}}})\n"
        "p = plan(job)\n"
        "planned = 'dask.dataframe' in sys.modules\n"
        "rows = len(p.source.frame.compute())\n"
        "print(json.dumps([planned, p.source.columns, p.model_input.features, rows]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, ["x", "y", "month"], ["x", "month"], 4]
