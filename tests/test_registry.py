"""The model registry on real files and on a moto S3 server: versions, aliases, promotion gates, diffs,
bad input, two processes writing at once, and processes killed in the middle of a registration."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dpipe
from dpipe import cli
from dpipe.bundle import Bundle
from dpipe.errors import BundleError, SpecError, StorageError
from dpipe.registry import Registry, parse_model_uri, resolve_model_uri
from dpipe.registry.refs import ModelRef
from dpipe.spec.registry import GateSpec, RegistrySpec
from tests.conftest import ROOT, job_dict


@pytest.fixture(scope="module")
def bundles(demo_root, client, tmp_path_factory) -> dict[str, str]:
    """Two small trained bundles: ``deep`` (max_depth 4) and ``shallow`` (max_depth 2, no ``sessions``)."""
    root = tmp_path_factory.mktemp("bundles")
    specs = {
        "deep": {"num_boost_round": 3},
        "shallow": {"num_boost_round": 3, "params": {"max_depth": 2, "eta": 0.3}, "exclude": ["date", "sessions"]},
    }
    out = {}
    for name, train in specs.items():
        job = dpipe.job_from_dict(job_dict(demo_root, root / name, train=train))
        out[name] = dpipe.run(job, client, progress=False).bundle_uri
    return out


@pytest.fixture
def s3_registry(s3) -> Registry:
    return Registry(f"s3://{s3['bucket']}/registry", s3["storage_options"])


def _record(registry_root: Path, name: str, number: int) -> dict:
    return json.loads((registry_root / name / "versions" / str(number) / "registered.json").read_text())


# -- versions and resolution ---------------------------------------------------------------------
def test_register_copies_the_bundle_into_numbered_versions(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(bundles["deep"], "churn", aliases=["challenger"])
    v2 = reg.register(bundles["shallow"], "churn")
    assert (v1.number, v2.number, v1.aliases, v2.aliases) == (1, 2, ("challenger",), ())
    assert [v.number for v in reg.versions("churn")] == [1, 2] and reg.names() == ["churn"]

    record = _record(tmp_path / "reg", "churn", 1)
    manifest = json.loads((Path(bundles["deep"]) / "manifest.json").read_text())
    assert record["source"] == bundles["deep"] and record["run_id"] == manifest["run_id"]
    assert record["metrics"]["valid"]["auc"] == v1.metrics["valid"]["auc"] and "history" not in record["metrics"]
    assert record["registered_by"]["host"] and record["registered_at"]
    for rel, entry in record["files"].items():  # a full copy, hashed
        data = (tmp_path / "reg" / "churn" / "versions" / "1" / rel).read_bytes()
        assert data == (Path(bundles["deep"]) / rel).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {"model.ubj", "pipeline.json", "metrics.json", "manifest.json"} <= set(record["files"])
    assert reg.verify("churn", 1) == [] and not (tmp_path / "reg" / "churn" / ".staging").exists()

    assert reg.resolve("models:/churn@challenger") == v1.uri == str(tmp_path / "reg" / "churn" / "versions" / "1")
    assert reg.resolve("models:/churn/2") == reg.resolve("models:/churn") == reg.resolve("models:/churn/latest")
    assert Bundle.load(reg.resolve("models:/churn@challenger")).metrics["valid"] == v1.metrics["valid"]


def test_model_uris_resolve_through_the_environment(bundles, tmp_path, monkeypatch):
    Registry(str(tmp_path / "reg")).register(bundles["deep"], "churn", aliases=["champion"])
    monkeypatch.delenv("DPIPE_REGISTRY", raising=False)
    assert resolve_model_uri("runs/churn") == "runs/churn"  # not a model URI: unchanged
    with pytest.raises(SpecError, match="(?s)no model registry given.*DPIPE_REGISTRY"):
        resolve_model_uri("models:/churn@champion")
    monkeypatch.setenv("DPIPE_REGISTRY", str(tmp_path / "reg"))
    assert resolve_model_uri("models:/churn@champion").endswith("churn/versions/1")
    assert parse_model_uri("models:/churn@champion") == ModelRef("churn", alias="champion")
    assert str(parse_model_uri("models:/churn/3")) == "models:/churn/3"
    for bad in ("models:/churn/x", "models:/a/b@c", "models:/churn@", "models:/"):
        with pytest.raises(SpecError, match="model URI|name"):
            parse_model_uri(bad)


def test_a_registry_on_s3(bundles, s3, s3_registry):
    v = s3_registry.register(bundles["deep"], "churn", aliases=["champion"])
    s3_registry.register(bundles["shallow"], "churn")
    assert v.uri == f"s3://{s3['bucket']}/registry/churn/versions/1"
    fs = s3["fs"]  # read back with s3fs itself
    fs.invalidate_cache()
    record = json.loads(fs.cat_file(f"{s3['bucket']}/registry/churn/versions/1/registered.json"))
    model = fs.cat_file(f"{s3['bucket']}/registry/churn/versions/1/model.ubj")
    assert record["files"]["model.ubj"]["sha256"] == hashlib.sha256(model).hexdigest()
    head = json.loads(fs.cat_file(f"{s3['bucket']}/registry/churn/aliases/champion/00000001.json"))
    assert (head["version"], head["seq"], head["reason"]) == (1, 1, "register")
    uri = resolve_model_uri("models:/churn@champion", registry=s3_registry)
    assert Bundle.load(uri, s3["storage_options"]).metrics["valid"] == v.metrics["valid"]
    assert [x.number for x in s3_registry.versions("churn")] == [1, 2] and s3_registry.verify("churn", 2) == []
    assert not fs.exists(f"{s3['bucket']}/registry/churn/.staging")


# -- aliases, journal, promotion -----------------------------------------------------------------
def test_aliases_keep_their_history_and_the_journal_every_change(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    for _ in range(3):
        reg.register(bundles["deep"], "churn")
    reg.set_alias("churn", "staging", 1)
    reg.set_alias("churn", "staging", 3)
    assert reg.set_alias("churn", "staging", "3").seq == 2  # already there: no move
    reg.set_alias("churn", "prod", "staging")  # an alias may name another alias's version
    history = reg.alias_history("churn", "staging")
    assert [(m.seq, m.previous, m.version) for m in history] == [(1, None, 1), (2, 1, 3)]
    assert reg.aliases("churn") == {"prod": 3, "staging": 3}
    assert [v.aliases for v in reg.versions("churn")] == [(), (), ("prod", "staging")]
    events = [(e["event"], e.get("version")) for e in reg.journal("churn")]
    assert events == [("register", 1), ("register", 2), ("register", 3), ("alias", 1), ("alias", 3), ("alias", 3)]


def _scores(table: dict[str, dict[str, float]]):
    """Scores by the version folder a bundle URI ends with."""
    return lambda uri: table[uri.rsplit("/", 1)[-1]]


def test_promotion_through_a_gate(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    for _ in range(4):
        reg.register(bundles["deep"], "churn")
    scores = _scores({"1": {"auc": 0.80}, "2": {"auc": 0.801}, "3": {"auc": 0.83}, "4": {"auc": 0.79}})
    gate = {"metric": "auc", "margin": 0.002}

    first = reg.promote("churn", 1, gate=gate, scores=scores)
    assert (first.promoted, first.champion, first.candidate_score) == (True, None, 0.80)
    assert "no version holds 'champion'" in first.reason

    close = reg.promote("churn", 2, gate=gate, scores=scores)  # better, but not by the margin
    assert (close.promoted, close.candidate_score, close.champion_score) == (False, 0.801, 0.80)
    assert "does not beat" in close.reason and reg.aliases("churn") == {"champion": 1}

    better = reg.promote("churn", 3, gate=gate, scores=scores)
    assert (better.promoted, better.champion, better.direction) == (True, 1, "maximize")
    assert reg.resolve("models:/churn@champion").endswith("versions/3")

    loss = reg.promote("churn", 4, gate={"metric": "logloss"}, scores=lambda uri: {"logloss": 0.1})
    assert (loss.promoted, loss.direction) == (False, "minimize")  # equal is not better

    forced = reg.promote("churn", 4)  # no gate: unconditional, and recorded
    assert (forced.promoted, forced.reason) == (True, "no gate: moved unconditionally")

    decisions = [e for e in reg.journal("churn") if e["event"] == "promote"]
    assert [(d["candidate"], d["promoted"]) for d in decisions] == [
        (1, True),
        (2, False),
        (3, True),
        (4, False),
        (4, True),
    ]
    assert (decisions[1]["candidate_score"], decisions[1]["champion_score"]) == (0.801, 0.80)
    moves = reg.alias_history("churn", "champion")
    assert [(m.version, m.reason) for m in moves] == [(1, "promote"), (3, "promote"), (4, "promote")]
    assert moves[1].decision["champion_score"] == 0.80  # the evidence travels with the move itself


def test_a_promotion_judges_again_when_the_alias_moved_while_scoring(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    for _ in range(3):
        reg.register(bundles["deep"], "churn")
    reg.set_alias("churn", "champion", 1)
    other = Registry(str(tmp_path / "reg"))  # another writer
    table = {"1": 0.70, "2": 0.90, "3": 0.80}

    def scores(uri: str) -> dict[str, float]:
        if other.alias_history("churn", "champion")[-1].version != 2:
            other.set_alias("churn", "champion", 2)  # moves it while version 3 is being scored
        return {"auc": table[uri.rsplit("/", 1)[-1]]}

    decision = reg.promote("churn", 3, gate={"metric": "auc"}, scores=scores)
    assert (decision.promoted, decision.champion, decision.champion_score) == (False, 2, 0.90)
    assert reg.aliases("churn") == {"champion": 2}


def test_gate_specs_and_promotion_errors(bundles, tmp_path):
    assert GateSpec(metric="aucpr").direction == "maximize" and GateSpec(metric="rmse").direction == "minimize"
    assert GateSpec(metric="custom", direction="minimize").margin == 0.0
    spec = RegistrySpec.model_validate(
        {"uri": "s3://ml/reg", "name": "churn", "gate": {"metric": "auc", "source": {"uri": "data/holdout.csv"}}}
    )
    assert spec.gate is not None and spec.gate.source is not None and spec.gate.source.format == "csv"
    with pytest.raises(ValueError, match="`direction` .* is required for metric 'custom'"):
        GateSpec(metric="custom")
    with pytest.raises(ValueError, match="alias '7' is reserved"):
        RegistrySpec(uri="reg", aliases=["7"])
    with pytest.raises(ValueError, match="margin"):
        GateSpec(metric="auc", margin=-1)

    reg = Registry(str(tmp_path / "reg"))
    reg.register(bundles["deep"], "churn")
    with pytest.raises(SpecError, match="needs the scores"):
        reg.promote("churn", 1, gate={"metric": "auc"})
    with pytest.raises(SpecError, match="gate.direction: `direction`"):
        reg.promote("churn", 1, gate={"metric": "nope"}, scores=lambda uri: {})
    with pytest.raises(SpecError, match=r"metric 'auc' is not among the scores .* scores: \['logloss'\]"):
        reg.promote("churn", 1, gate={"metric": "auc"}, scores=lambda uri: {"logloss": 0.3})
    assert reg.aliases("churn") == {}


def test_diff_names_what_changed(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    reg.register(bundles["deep"], "churn")
    reg.register(bundles["shallow"], "churn", aliases=["challenger"])
    d = reg.diff("churn", 1, "challenger")
    assert (d["a"]["version"], d["b"]["version"], d["b"]["aliases"]) == (1, 2, ["challenger"])
    assert d["params"]["params.max_depth"] == {"a": 4, "b": 2}
    assert d["params"]["exclude[1]"] == {"a": None, "b": "sessions"}
    assert d["features"] == {"added": [], "removed": ["sessions"]}
    auc = d["metrics"]["valid"]["auc"]
    assert auc["delta"] == pytest.approx(auc["b"] - auc["a"])
    assert d["spec"] == {} and "output.uri" not in d["spec"]
    assert reg.diff("churn", 2, 2)["params"] == {}


# -- bad input -----------------------------------------------------------------------------------
def test_what_does_not_exist_is_named_with_what_does(bundles, tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    reg.register(bundles["deep"], "churn", aliases=["champion"])
    with pytest.raises(SpecError, match=r"model 'churn' has no alias 'champoin'; aliases: \{'champion': 1\}"):
        reg.resolve("models:/churn@champoin")
    with pytest.raises(SpecError, match=r"model 'churn' has no version 5; versions: \[1\]"):
        reg.show("churn", 5)
    with pytest.raises(SpecError, match=r"no model 'fraud' in .*; models: \['churn'\]"):
        reg.versions("fraud")
    with pytest.raises(SpecError, match="name 'churn/x' has characters that are not allowed"):
        reg.register(bundles["deep"], "churn/x")
    with pytest.raises(SpecError, match="alias 'a b' has characters"):
        reg.set_alias("churn", "a b", 1)
    with pytest.raises(SpecError, match="alias 'latest' is reserved"):
        reg.register(bundles["deep"], "churn", aliases=["latest"])
    with pytest.raises(StorageError, match="is not a model registry .no registry.json"):
        Registry(str(tmp_path / "elsewhere")).names()
    assert [v.number for v in reg.versions("churn")] == [1]


def test_a_registry_without_write_access_writes_nothing(bundles, tmp_path, s3):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(
        StorageError, match=r"registry: cannot write to .*a-file/reg.: a file is where a folder of its path should be"
    ):
        Registry(str(blocker / "reg")).register(bundles["deep"], "churn")
    missing = Registry("s3://no-such-bucket-dpipe/reg", s3["storage_options"])
    with pytest.raises(StorageError, match="registry: 's3://no-such-bucket-dpipe/reg' does not exist"):
        missing.register(bundles["deep"], "churn")
    s3["fs"].invalidate_cache()
    assert s3["fs"].ls("", refresh=True) == [s3["bucket"]]  # no bucket was created on the way
    assert blocker.read_text() == "not a folder"


def _copy(bundle: str, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_what_is_not_a_complete_compatible_bundle_is_refused_before_anything_is_written(bundles, tmp_path):
    reg_root = tmp_path / "reg"
    reg = Registry(str(reg_root))
    half = _copy(bundles["deep"], tmp_path / "half")
    (half / "manifest.json").unlink()
    no_model = _copy(bundles["deep"], tmp_path / "no-model")
    (no_model / "model.ubj").unlink()
    newer = _copy(bundles["deep"], tmp_path / "newer")
    _edit(newer / "manifest.json", dpipe_version="99.1.0")
    unversioned = _copy(bundles["deep"], tmp_path / "unversioned")
    _edit(unversioned / "manifest.json", dpipe_version=None)
    future_pipeline = _copy(bundles["deep"], tmp_path / "future-pipeline")
    _edit(future_pipeline / "pipeline.json", format_version=99)
    cases = [
        (tmp_path / "nothing", "does not exist"),
        (half, r"is not a complete model bundle \(no manifest.json\)"),
        (no_model, r"is incomplete: \['model.ubj'\] missing"),
        (newer, r"(?s)was written by dpipe 99.1.0; this is dpipe .*upgrade dpipe to 99.1"),
        (unversioned, r"manifest.json has no dpipe version \(`dpipe_version`: None\)"),
        (future_pipeline, "its fitted pipeline has format_version 99; this dpipe reads 1"),
    ]
    for path, message in cases:
        with pytest.raises(BundleError, match=message):
            reg.register(str(path), "churn")
    assert not reg_root.exists()  # not even the registry's folder


# -- concurrency ---------------------------------------------------------------------------------
WORKER = r"""
import json, sys
from dpipe.registry import Registry
registry, options, bundle, alias, rounds = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
reg = Registry(registry, options)
print("ready", flush=True)
sys.stdin.readline()  # both start together
done = []
for _ in range(rounds):
    v = reg.register(bundle, "churn", storage_options={})
    move = reg.set_alias("churn", alias, v.number)
    done.append({"version": v.number, "token": move.token})
print(json.dumps(done), flush=True)
"""


def _race(registry: str, options: dict, bundle: str, rounds: int) -> list[list[dict]]:
    """Two processes registering ``rounds`` versions each and pointing ``staging`` at each, at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, registry, json.dumps(options), bundle, "staging", str(rounds)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0]
    return results


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_processes_registering_and_moving_an_alias_at_once(bundles, tmp_path, request, where):
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        uri, options, rounds = f"s3://{s3['bucket']}/registry", s3["storage_options"], 2
    else:
        uri, options, rounds = str(tmp_path / "reg"), {}, 5
    Registry(uri, options).register(bundles["deep"], "churn")  # the registry exists before the race
    results = _race(uri, options, bundles["deep"], rounds)

    numbers = sorted(d["version"] for r in results for d in r)
    assert numbers == list(range(2, 2 + 2 * rounds))  # unique, none lost
    reg = Registry(uri, options)
    assert [v.number for v in reg.versions("churn")] == [1, *numbers] and all(
        reg.verify("churn", n) == [] for n in (numbers[0], numbers[-1])
    )
    history = reg.alias_history("churn", "staging")
    assert [m.seq for m in history] == list(range(1, 1 + 2 * rounds))  # every move, in one chain
    assert {m.token for m in history} == {d["token"] for r in results for d in r}
    assert all(m.previous == before.version for before, m in zip(history, history[1:], strict=False))
    assert reg.aliases("churn")["staging"] == history[-1].version


# -- crashes -------------------------------------------------------------------------------------
DIE = r"""
import json, os, sys
import dpipe.registry.bundles as bundles
import dpipe.registry.publish as publish
import dpipe.registry.store as store
from dpipe.registry import Registry
point, registry, options, bundle = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]

def after(function, calls=1):
    made = []
    def dying(*args, **kwargs):
        result = function(*args, **kwargs)
        made.append(1)
        if len(made) >= calls:
            os._exit(9)
        return result
    return dying

def dead(*args, **kwargs):
    os._exit(9)

if point == "staging":  # one file staged of five
    bundles.copy_file = after(bundles.copy_file)
elif point == "claimed":  # the number claimed, nothing in versions/ yet
    publish.claim_number = after(publish.claim_number)
elif point == "publishing" and registry.startswith("s3://"):  # one file copied into versions/<n>/
    publish.ensure_parent = after(publish.ensure_parent, calls=2)
elif point == "publishing":  # the record staged, the folder not renamed into place
    publish.os.rename = dead
elif point == "journal":  # the alias moved, its journal entry not written
    write = store.Registry._write_journal
    def dying(self, name, event, /, **data):
        if event == "alias":
            os._exit(9)
        return write(self, name, event, **data)
    store.Registry._write_journal = dying
Registry(registry, options).register(bundle, "churn", aliases=["champion"])
raise SystemExit("the registration finished without reaching " + point)
"""


@pytest.mark.parametrize(
    ("where", "point"),
    [("local", "staging"), ("local", "claimed"), ("local", "publishing"), ("local", "journal"), ("s3", "publishing")],
)
def test_a_process_killed_mid_register_leaves_a_readable_registry(bundles, tmp_path, request, where, point):
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        uri, options = f"s3://{s3['bucket']}/registry", s3["storage_options"]
    else:
        uri, options = str(tmp_path / "reg"), {}
    Registry(uri, options).register(bundles["deep"], "churn", aliases=["champion"])
    died = subprocess.run(
        [sys.executable, "-c", DIE, point, uri, json.dumps(options), bundles["shallow"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert died.returncode == 9, died.stderr

    reg = Registry(uri, options)
    published = point == "journal"  # killed after the version and its alias were in place
    assert [v.number for v in reg.versions("churn")] == ([1, 2] if published else [1])
    assert reg.aliases("churn") == {"champion": 2 if published else 1}
    assert reg.verify("churn", "champion") == [] and reg.names() == ["churn"]
    assert Bundle.load(reg.resolve("models:/churn@champion"), options).model_input.features

    after = reg.register(bundles["shallow"], "churn", aliases=["challenger"])
    expected = {"staging": 2, "claimed": 3, "publishing": 3, "journal": 3}[point]  # a claimed number is not reused
    assert after.number == expected and reg.verify("churn", after.number) == []
    assert [v.number for v in reg.versions("churn")] == sorted({1, 2, after.number} if published else {1, after.number})


# -- the command line ----------------------------------------------------------------------------
def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dpipe: error:")]


def test_the_commands(bundles, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPIPE_REGISTRY", str(tmp_path / "reg"))
    assert cli.main(["register", bundles["deep"], "--name", "churn", "--alias", "challenger"]) == 0
    assert "registered models:/churn/1 (challenger)" in capsys.readouterr().out
    assert cli.main(["register", bundles["shallow"], "--name", "churn", "--registry", str(tmp_path / "reg")]) == 0
    capsys.readouterr()

    assert cli.main(["registry", "list"]) == 0
    assert capsys.readouterr().out.split() == ["churn"]
    assert cli.main(["registry", "list", "churn"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[0] == "1" and rows[1].endswith("challenger") and rows[2].split()[0] == "2"
    assert cli.main(["registry", "show", "churn", "challenger", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["aliases"], shown["source"]) == (1, ["challenger"], bundles["deep"])

    assert cli.main(["registry", "promote", "churn", "2", "--no-gate"]) == 0
    assert "churn version 2 promoted to 'champion': no gate" in capsys.readouterr().out
    assert cli.main(["registry", "diff", "churn", "1", "champion"]) == 0
    out = capsys.readouterr().out
    assert "churn: version 1 -> version 2" in out and "params.max_depth: 4 -> 2" in out
    assert "features: added none, removed ['sessions']" in out


def test_gated_promotion_on_the_command_line_scores_both_bundles(bundles, tmp_path, capsys, monkeypatch):
    reg = Registry(str(tmp_path / "reg"))
    reg.register(bundles["deep"], "churn", aliases=["champion"])
    reg.register(bundles["shallow"], "churn")
    calls = []

    def score_bundle(bundle_uri, source, *, storage_options=None):
        calls.append((bundle_uri.rsplit("/", 1)[-1], source.uri, source.format))
        return {"logloss": 0.4 if bundle_uri.endswith("2") else 0.5}

    import dpipe.scoring

    # The real scoring is tested end to end in tests/integration/test_lifecycle.py.
    monkeypatch.setattr(dpipe.scoring, "score_bundle", score_bundle)
    holdout = str(tmp_path / "holdout.parquet")
    args = ["registry", "promote", "churn", "2", "--registry", str(tmp_path / "reg"), "--json"]
    assert cli.main([*args, "--metric", "logloss", "--margin", "0.05", "--source", holdout]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert (decision["promoted"], decision["candidate_score"], decision["champion_score"]) == (True, 0.4, 0.5)
    assert sorted(calls) == [("1", holdout, "parquet"), ("2", holdout, "parquet")]
    assert reg.aliases("churn") == {"champion": 2}


def test_command_errors_are_one_message_with_the_exit_status(bundles, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DPIPE_REGISTRY", raising=False)
    assert cli.main(["registry", "list"]) == 2
    assert _errors(capsys.readouterr().err) == ["dpipe: error: registry: no model registry given"]
    reg = str(tmp_path / "reg")
    assert cli.main(["register", bundles["deep"], "--name", "churn", "--registry", reg]) == 0
    capsys.readouterr()
    assert cli.main(["registry", "show", "churn", "champion", "--registry", reg]) == 2
    assert "has no alias 'champion'; aliases: none" in capsys.readouterr().err
    assert cli.main(["registry", "promote", "churn", "1", "--registry", reg]) == 2
    assert "needs --metric and --source" in capsys.readouterr().err
    assert cli.main(["registry", "promote", "churn", "1", "--no-gate", "--metric", "auc", "--registry", reg]) == 2
    assert "--no-gate moves the alias unconditionally" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["register", bundles["deep"], "--name", "churn", "--registry", str(blocker / "reg")]) == 1
    assert cli.main(["register", str(tmp_path), "--name", "churn", "--registry", reg]) == 1
    err = capsys.readouterr().err
    assert len(_errors(err)) == 2 and "not a complete model bundle" in err and "Traceback" not in err
