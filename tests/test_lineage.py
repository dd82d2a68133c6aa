"""The lineage of real outputs: a bundle, its predictions (a Parquet folder, Delta, DuckDB, Iceberg,
PostgreSQL), a features job applying the bundle's pipeline, and a model trained on a features
job's Delta table; read back and walked upstream. Plus the tree's bounds (cycles, depth) and
custom ops' packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dpipe
from dpipe.errors import SpecError, StorageError
from dpipe.lineage import code_lineage, format_tree, lineage_tree, read_output
from dpipe.ops.base import Op
from dpipe.pipeline import FeaturePipeline
from tests.conftest import job_dict


@pytest.fixture(scope="module")
def lake(tmp_path_factory, client):
    """Small demo data, a bundle trained on it, and its predictions in a folder and a Delta table."""
    from dpipe.demo import write_demo_data

    root = tmp_path_factory.mktemp("lineage")
    write_demo_data(str(root / "demo"), rows=2000, days=2, seed=4)
    bundle = root / "m1"
    dpipe.run(
        dpipe.job_from_dict(job_dict(root / "demo", bundle, train={"num_boost_round": 3})), client, progress=False
    )
    events = str(root / "demo" / "events")
    dpipe.predict(str(bundle), events, str(root / "scores"), client=client, progress=False)
    delta = {"format": "delta", "uri": str(root / "scores-delta"), "mode": "append"}
    dpipe.predict(str(bundle), events, delta, client=client, progress=False)
    return {"root": root, "bundle": bundle, "events": events}


def _input(node):
    (found,) = [p for p in node["parents"] if p["kind"] == "input" and p["role"] == "source"]
    return found


def test_the_tree_of_predictions_reaches_the_bundle_and_the_data_it_was_trained_on(lake):
    scores = lake["root"] / "scores"
    tree = lineage_tree(str(scores))
    assert (tree["kind"], tree["format"], tree["uri"]) == ("predictions", "parquet", str(scores))
    model = tree["parents"][0]
    assert (model["kind"], model["role"], model["uri"], model["job"]) == (
        "bundle",
        "model",
        str(lake["bundle"]),
        "test",
    )
    assert model["versions"]["xgboost"].startswith("3.") and model["finished_at"]
    trained_on = _input(model)
    assert trained_on["uri"] == lake["events"] and trained_on["format"] == "parquet"
    assert trained_on["datums"] == 2 and trained_on["record"]["kind"] == "files"
    assert all(d["id"].endswith(".parquet") and d["version"] for d in trained_on["first_datums"])
    assert _input(tree)["uri"] == lake["events"]  # what was scored

    text = format_tree(tree)
    lines = text.splitlines()
    assert lines[0].startswith(f"predictions {scores} (parquet")
    run = f"run {model['run_id'][:8]}, " if model["run_id"] else ""  # manifests before run ids have none
    assert lines[1] == f"├─ model: bundle {lake['bundle']} (job test, {run}{model['finished_at'][:19]})"
    assert f"│  │  spec {model['spec_hash'][:12]}, dpipe " in text and "xgboost 3." in text
    assert f"│  └─ source: parquet {lake['events']} (2 datums" in text and "date=2024-01-01/part-0.parquet" in text
    assert lines[-1].startswith(f"└─ source: parquet {lake['events']}")
    json.dumps(tree)  # the CLI's --json


def test_predictions_in_a_delta_table_are_read_from_the_commit(lake):
    uri = str(lake["root"] / "scores-delta")
    manifest = read_output(uri)
    assert manifest["kind"] == "predict" and manifest["bundle"] == str(lake["bundle"])
    tree = lineage_tree(uri, format="delta")
    assert tree["format"] == "delta" and tree["commit"]["version"] == 0 and tree["commit"]["txn"]
    assert tree["parents"][0]["uri"] == str(lake["bundle"])
    assert format_tree(tree).startswith(f"predictions {uri} (delta v0")


def test_a_features_job_applying_a_bundle_leads_to_the_bundle(lake, client):
    out = lake["root"] / "features-from-m1"
    job = {
        "kind": "features",
        "name": "scoring-features",
        "source": {"uri": lake["events"]},
        "pipeline_from": str(lake["bundle"]),
        "output": {"format": "delta", "uri": str(out)},
    }
    dpipe.run(dpipe.job_from_dict(job), client, progress=False)
    tree = lineage_tree(str(out))
    assert (tree["kind"], tree["job"], tree["commit"]["version"]) == ("features", "scoring-features", 0)
    model = tree["parents"][0]
    assert (model["role"], model["kind"], model["uri"]) == ("pipeline_from", "bundle", str(lake["bundle"]))
    assert _input(model)["uri"] == lake["events"]
    assert f"├─ pipeline_from: bundle {lake['bundle']}" in format_tree(tree)


def test_a_model_trained_on_a_features_table_leads_to_the_features_job(lake, client):
    features = lake["root"] / "features-own"
    job = {
        "kind": "features",
        "name": "clean-events",
        "source": {"uri": lake["events"]},
        "features": [{"op": "fill_missing", "columns": ["income"], "strategy": "mean"}],
        "output": {"format": "delta", "uri": str(features)},
    }
    dpipe.run(dpipe.job_from_dict(job), client, progress=False)
    bundle = lake["root"] / "m2"
    spec = job_dict(lake["root"] / "demo", bundle, train={"num_boost_round": 2}, name="on-features")
    spec["source"] = {"format": "delta", "uri": str(features)}
    dpipe.run(dpipe.job_from_dict(spec), client, progress=False)

    tree = lineage_tree(str(bundle))
    assert (tree["kind"], tree["job"]) == ("bundle", "on-features")
    table = _input(tree)
    assert table["format"] == "delta" and table["record"]["version"] == 0
    (made_by,) = table["parents"]
    assert (made_by["role"], made_by["kind"], made_by["job"]) == ("written by", "features", "clean-events")
    assert made_by["commit"]["version"] == 0 and _input(made_by)["uri"] == lake["events"]
    text = format_tree(tree)
    assert "└─ source: delta " in text and "(version 0, 2 datums" in text
    assert "   └─ written by: features " in text and "(delta v0, job clean-events" in text
    assert lineage_tree(str(bundle), depth=1)["parents"][0]["parents"][0]["truncated"] is True


def test_predictions_in_duckdb_and_iceberg_tables(lake, client, tmp_path):
    db = tmp_path / "warehouse.duckdb"
    sink = {"format": "duckdb", "uri": str(db), "table": "scores"}
    written = dpipe.predict(str(lake["bundle"]), lake["events"], sink, client=client, progress=False)
    assert read_output(str(db), table="scores")["kind"] == "predict"
    tree = lineage_tree(written.output_uri)  # duckdb://<file>/scores, as the commit names it
    assert tree["format"] == "duckdb" and tree["commit"]["txn"] and tree["parents"][0]["uri"] == str(lake["bundle"])
    with pytest.raises(StorageError, match="holds no dpipe output"):
        read_output(str(db), table="other")

    catalog = {"warehouse": str(tmp_path / "ice")}
    sink = {"format": "iceberg", "table": "lake.scores", "catalog": catalog}
    dpipe.predict(str(lake["bundle"]), lake["events"], sink, client=client, progress=False)
    tree = lineage_tree("iceberg://default/lake.scores", catalog=catalog)
    assert tree["format"] == "iceberg" and tree["commit"]["snapshot_id"] is not None
    assert tree["parents"][0]["uri"] == str(lake["bundle"])
    assert format_tree(tree).startswith("predictions iceberg://default/lake.scores (iceberg snapshot ")


def test_predictions_in_postgresql_never_show_the_password(lake, client, postgres):
    sink = {"format": "postgresql", "uri": postgres.uri, "table": "lineage_scores", "mode": "replace"}
    dpipe.predict(str(lake["bundle"]), lake["events"], sink, client=client, progress=False)
    tree = lineage_tree(postgres.uri, table="lineage_scores")
    assert tree["format"] == "postgresql" and tree["parents"][0]["uri"] == str(lake["bundle"])
    assert tree["uri"] == f"postgresql://{postgres.host}:{postgres.port}/{postgres.dbname}/lineage_scores"
    assert postgres.password not in json.dumps(tree) + format_tree(tree)
    with pytest.raises(SpecError, match="names a database, not a table"):
        read_output(postgres.uri)


def test_what_is_not_a_dpipe_output_says_so(lake, tmp_path):
    with pytest.raises(StorageError, match=r"lineage: '.*events' holds no dpipe output \(no manifest.json"):
        read_output(lake["events"])
    with pytest.raises(StorageError, match="does not exist"):
        lineage_tree(str(tmp_path / "nothing"))
    with pytest.raises(SpecError, match="unknown output format 'csv'"):
        read_output(lake["events"], format="csv")


def _output(folder, manifest):
    """An output folder as a dpipe commit leaves it (only its manifest: the tree reads nothing else)."""
    folder.mkdir(parents=True)
    (folder / "_dpipe_manifest.json").write_text(json.dumps({"txn": None, "manifest": manifest}))
    return str(folder)


def test_incremental_parents_replaced_bundles_cycles_and_depth(lake, tmp_path):
    bundle = read_output(str(lake["bundle"]))
    first = _output(tmp_path / "a", {"kind": "features", "job": "f", "run_id": "r1", "parent": None})
    second = _output(
        tmp_path / "b",
        {"kind": "predict", "run_id": "r2", "bundle": str(lake["bundle"]), "bundle_run_id": "gone",
         "parent": {"run_id": "r1", "uri": first}, "code": {"custom_ops": [{"op": "m:Op", "package": "m", "version": "1"}]}},
    )  # fmt: skip
    tree = lineage_tree(second)
    model, previous = tree["parents"]
    if bundle.get("run_id"):  # a bundle that records its run: it is not the one the scores were made with
        assert (model["run_id"], model["replaced_by"], model["parents"]) == ("gone", bundle["run_id"], [])
        assert f"├─ model: bundle {lake['bundle']} (run gone; replaced by run {bundle['run_id'][:8]})" in format_tree(
            tree
        )
    else:
        assert "replaced_by" not in model and model["uri"] == str(lake["bundle"])
    assert (previous["role"], previous["run_id"], previous["job"]) == ("previous run", "r1", "f")
    assert "op m:Op (m 1)" in format_tree(tree)

    # Two outputs naming each other as parents: the walk stops where it came back.
    loop = tmp_path / "loop"
    _output(loop / "x", {"kind": "features", "run_id": "x1", "parent": {"run_id": "y1", "uri": str(loop / "y")}})
    _output(loop / "y", {"kind": "features", "run_id": "y1", "parent": {"run_id": "x1", "uri": str(loop / "x")}})
    tree = lineage_tree(str(loop / "x"))
    back = tree["parents"][0]["parents"][0]
    assert back["run_id"] == "x1" and back["cycle"] is True and back["parents"] == []
    assert format_tree(tree).endswith("(parquet, run x1; cycle)")

    lost = _output(tmp_path / "c", {"kind": "features", "run_id": "r3", "parent": {"run_id": "r0", "uri": first}})
    (gone,) = lineage_tree(lost)["parents"]
    assert (gone["run_id"], gone["replaced_by"]) == ("r0", "r1")  # a folder holds its latest run only
    assert format_tree(lineage_tree(lost)).endswith(
        f"previous run: features {first} (parquet, run r0; replaced by run r1)"
    )


class Winsorize(Op):
    """A custom op of the test suite (its module belongs to no installed distribution)."""


def test_code_lineage_names_custom_ops_with_their_package():
    class FromYaml(Op):
        pass

    FromYaml.__module__ = "yaml.ops"  # as if PyYAML shipped it
    builtin = FeaturePipeline.from_specs(dpipe.job_from_dict(job_dict(Path("data"), Path("out"))).features)
    ops = [*builtin.ops, Winsorize({}, "features[5]"), FromYaml({}, "features[6]"), Winsorize({}, "features[7]")]
    got = code_lineage(ops)["custom_ops"]
    import yaml

    assert got == [
        {"op": "tests.test_lineage:Winsorize", "package": None, "version": None},
        {"op": "yaml.ops:test_code_lineage_names_custom_ops_with_their_package.<locals>.FromYaml",
         "package": "PyYAML", "version": yaml.__version__},
    ]  # fmt: skip
    assert code_lineage([{"op": "fill_missing"}, {"op": "yaml.x:Y"}])["custom_ops"][0]["package"] == "PyYAML"


def test_the_lineage_command_prints_the_tree_and_its_json(lake, capsys):
    from dpipe.cli import main

    scores = str(lake["root"] / "scores")
    assert main(["lineage", scores]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"predictions {scores} (parquet") and f"model: bundle {lake['bundle']}" in text
    assert main(["lineage", scores, "--json", "--depth", "1"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["kind"] == "predictions" and tree["parents"][0]["kind"] == "bundle"
    assert main(["lineage", str(lake["root"] / "nothing-here")]) == 1
    assert "nothing-here' does not exist" in capsys.readouterr().err


def test_an_incremental_bundle_records_its_parent_run(lake, client, tmp_path):
    import shutil

    events = tmp_path / "events"
    shutil.copytree(lake["events"], events)
    later = sorted(events.glob("date=*"))[-1]
    shutil.move(str(later), tmp_path / later.name)
    spec = job_dict(lake["root"] / "demo", tmp_path / "m", source={"uri": str(events)}, incremental=True)
    spec["train"] = {**spec["train"], "num_boost_round": 3}
    first = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    shutil.move(str(tmp_path / later.name), events / later.name)
    second = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    tree = lineage_tree(second.bundle_uri)
    assert tree["run_id"] == second.manifest["run_id"]
    (previous,) = [p for p in tree["parents"] if p.get("role") == "previous run"]
    assert previous["run_id"] == first.manifest["run_id"]
    # The earlier run's bundle was replaced; the run state keeps its record.
    assert [r["run_id"] for r in tree["runs"]] == [first.manifest["run_id"], second.manifest["run_id"]]
    assert [r["datums"] for r in tree["runs"]] == [1, 1]
    assert f"runs: {first.manifest['run_id'][:8]} (+1 datums), {second.manifest['run_id'][:8]} (+1 datums)" in (
        format_tree(tree)
    )
