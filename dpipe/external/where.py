"""Where training holds its rows: ``train.memory``'s choice, and the scratch directory of the shards."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

from dpipe.errors import TrainingError
from dpipe.keep import WORKER_BASELINE, size_text

#: The share of the workers' memory, past what each holds idle, that in-memory training may take
#: under ``train.memory: auto``.
SHARE = 0.6
#: What in-memory training holds for each byte of transformed rows: the placed rows, XGBoost's
#: quantile matrix and gradients, and the copies made while cutting the sides (measured: ~1.9x).
MATRIX_OVERHEAD = 2.0
#: What XGBoost keeps in memory for each row even with its matrix on disk: gradient pairs, the
#: training and validation prediction caches, labels, and each row's tree position (a 40M-row run on
#: two workers limited to 768 MiB each crossed their limits while training).
XGBOOST_ROW_BYTES = 30


@dataclass(frozen=True)
class Decision:
    """Whether training reads its rows from disk, and why (for the log)."""

    external: bool
    reason: str
    #: A warning that even on disk the workers may not hold what XGBoost keeps per row.
    warning: str | None = None


def decide(how: str, rows: int, width: int, memory_limit: int | None, workers: int = 1) -> Decision:
    """``train.memory`` (``auto``, ``memory``, ``external``) for ``rows`` transformed rows of
    ``width`` bytes each on ``workers`` workers with ``memory_limit`` bytes in all (``None``:
    unlimited)."""
    if how == "external":
        return Decision(True, "on disk (train.memory is external)", _tight(rows, memory_limit, workers))
    if how == "memory":
        return Decision(False, "in memory (train.memory is memory)")
    need = int(rows * width * MATRIX_OVERHEAD)
    if memory_limit is None:
        return Decision(False, "in memory: the workers' memory is not limited (train.memory: external spills anyway)")
    budget = SHARE * max(memory_limit - workers * WORKER_BASELINE, 0)
    if need > budget:
        return Decision(
            True,
            f"on disk: training in memory needs about {size_text(need)}, more than {SHARE:.0%} of the workers'"
            f" {size_text(memory_limit)} past what they hold idle (train.memory: memory keeps the rows there)",
            _tight(rows, memory_limit, workers),
        )
    return Decision(
        False,
        f"in memory: about {size_text(need)}, within {SHARE:.0%} of the workers' {size_text(memory_limit)} past idle",
    )


def _tight(rows: int, memory_limit: int | None, workers: int) -> str | None:
    """A warning when XGBoost's per-row state and a worker's baseline exceed 95% of its limit
    (where its nanny restarts it), even with the matrix on disk."""
    if not memory_limit:
        return None
    each = memory_limit / max(workers, 1)
    need = rows / max(workers, 1) * XGBOOST_ROW_BYTES + WORKER_BASELINE
    if need <= 0.95 * each:
        return None
    return (
        f"even on disk, XGBoost keeps about {XGBOOST_ROW_BYTES} bytes a row in memory: about {size_text(need)} a"
        f" worker with its imports, over 95% of its {size_text(each)} limit (its nanny restarts it there); give"
        " the workers more memory, or fewer workers more each"
    )


def row_width(model_input: Any) -> int:
    """Bytes of one transformed row in memory: float32 numbers and category codes, and the label,
    side and id columns that travel with them (counted as 16 bytes)."""
    return 4 * len(model_input.features) + 16


def scratch_dir(given: str | None) -> str:
    """A new directory for one run's shards: under ``given`` (``train.scratch``) or the
    temporary directory of Dask's configuration (``temporary-directory``), else of the system."""
    import dask

    base = given or dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    path = os.path.join(os.path.abspath(os.path.expanduser(base)), f"dpipe-shards-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(path)
    except OSError as exc:
        raise TrainingError(
            f"train.scratch: cannot create {path!r} for the shards of external-memory training: {exc}",
            hint="set `train.scratch` to a writable directory every worker can read",
        ) from exc
    return path


def require_shared(client: Any, path: str) -> None:
    """Fail unless every worker sees ``path`` (the shards written by one worker are read by another)."""
    seen = client.run(os.path.isdir, path)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise TrainingError(
            f"train.memory: external: worker(s) {blind} cannot see the scratch directory {path!r}",
            hint="set `train.scratch` to a directory every worker mounts (shared storage), or train in memory",
        )
