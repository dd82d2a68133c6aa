"""Experiment for a proposed runner change: dpipe's fit pass as `dpipe.runner.run` builds it, and
with the fit frame projected to the columns the fit needs, on one cluster, alternating.

    python -m benchmarks.fit_projection 1e6

Prints the fit seconds of each variant, the bytes each reads per input byte (countingfile://) and
the start of the fitted state (identical in both).
"""

import sys
import tempfile
import time
from pathlib import Path

import dpipe
from benchmarks import suite
from benchmarks.data import dataset, dataset_bytes
from benchmarks.measure import bytes_read, counting_uri
from benchmarks.workload import COLUMNS, ID, dpipe_job
from dpipe.io import read
from dpipe.pipeline import FeaturePipeline
from dpipe.train import LABEL, VALID, Labeler


def fit_pass(client, uri, so, project):
    job = dpipe.job_from_dict(dpipe_job(uri, "/tmp/x", so))
    src = read(uri, columns=COLUMNS, storage_options=so)
    lab = Labeler(column="label", expr=None, split_key=(ID,), valid_fraction=0.2, seed=0)
    pipe = FeaturePipeline.from_specs(job.features)
    raw = src.frame
    if project:
        needed = set().union(*(op.input_columns() for op in pipe.ops)) | lab.label_inputs | set(lab.split_key)
        raw = raw[[c for c in raw.columns if c in needed]]
    labeled = raw.map_partitions(lab, meta=lab(raw._meta))

    def extras(frame):
        return {
            "rows_read": raw.map_partitions(len, meta=("rows", "int64")).sum(),
            "rows_per_partition": frame.map_partitions(len, meta=("rows", "int64")),
            "valid_rows": frame[VALID].sum(),
            "train_labels": frame[~frame[VALID]][LABEL].value_counts(split_out=1),
        }

    def compute(*c):
        return tuple(client.gather(client.compute(list(c))))

    t = time.perf_counter()
    pipe.fit(labeled, fit_rows=lambda f: f[~f[VALID]], extras=extras, extra_inputs={LABEL, VALID}, compute=compute)
    return time.perf_counter() - t, pipe


if __name__ == "__main__":
    rows = int(float(sys.argv[1]))
    root = dataset(Path("benchmarks/results/data"), rows)
    proj = dataset_bytes(root, COLUMNS)
    with suite.cluster("2x1") as client:
        fit_pass(client, str(root), None, False)
        times = {False: [], True: []}
        for _i in range(3):
            for p in (False, True):
                times[p].append(fit_pass(client, str(root), None, p)[0])
        for p in (False, True):
            c = tempfile.mkdtemp()
            _, pipe = fit_pass(client, counting_uri(root), {"counter_dir": c}, p)
            print(
                "projected" if p else "as runner",
                "fit s:",
                [round(x, 2) for x in times[p]],
                "reads/input byte:",
                round(bytes_read(Path(c))["bytes"] / proj, 3),
                "state:",
                str(pipe.to_dict()["ops"][0]["state"])[:80],
            )
