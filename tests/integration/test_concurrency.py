"""Jobs at once on one scheduler: four `dpipe run` processes submitted together, each output
identical to the same job run alone."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

import dpipe
from tests.conftest import ROOT, job_dict


def spec(demo_root, out, depth: int) -> dict:
    return job_dict(
        demo_root, out, train={"num_boost_round": 8, "early_stopping_rounds": 3, "params": {"max_depth": depth}}
    )


def test_four_jobs_at_once_give_what_each_gives_alone(remote_scheduler, demo_root, tmp_path):
    depths = [2, 3, 4, 5]
    for d in depths:
        job = dpipe.job_from_dict(spec(demo_root, tmp_path / f"alone-{d}", d))
        dpipe.run(job, scheduler=remote_scheduler, progress=False)
    procs = []
    for d in depths:
        path = tmp_path / f"job-{d}.yaml"
        path.write_text(yaml.safe_dump(spec(demo_root, tmp_path / f"together-{d}", d)))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dpipe.cli", "run", str(path), "--scheduler", remote_scheduler, "-q"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for d in depths:
        alone, together = tmp_path / f"alone-{d}", tmp_path / f"together-{d}"
        assert (together / "model.ubj").read_bytes() == (alone / "model.ubj").read_bytes(), d
        assert (together / "pipeline.json").read_text() == (alone / "pipeline.json").read_text(), d
        metrics = [json.loads((b / "metrics.json").read_text()) for b in (alone, together)]
        assert metrics[0]["valid"] == metrics[1]["valid"], d
