"""Run a job incrementally and die (``os._exit``, no cleanup) at a point of its Delta commit.

``python -m tests.die_at {before-commit|after-commit} JOB.yaml SCHEDULER``: ``before-commit`` dies
once the workers wrote their data files and before the commit; ``after-commit`` right after the
commit, before the run saves its state. What a killed process leaves is what the next run finds.
"""

from __future__ import annotations

import os
import sys

import dpipe
from dpipe.io.delta.write import DeltaSink


def main(point: str, spec: str, scheduler: str) -> None:
    commit = DeltaSink.commit

    def dying(self, **kwargs):
        if point == "before-commit":
            os._exit(9)
        commit(self, **kwargs)
        os._exit(9)

    DeltaSink.commit = dying  # type: ignore[method-assign]
    dpipe.run(dpipe.load_job(spec), scheduler=scheduler, progress=False, incremental=True)
    raise SystemExit("the run finished without reaching the commit")


if __name__ == "__main__":
    main(*sys.argv[1:4])
