import pytest
import yaml

from dpipe.errors import SpecError
from dpipe.spec import job_from_dict, load_job, redacted

MINIMAL = {"source": {"uri": "data/x"}, "label": {"column": "y"}, "output": {"uri": "runs/x"}}


def test_minimal_spec_gets_defaults():
    job = job_from_dict(MINIMAL)
    assert job.source.format == "parquet"
    assert job.train.objective == "binary:logistic"
    assert job.split.valid_fraction == 0.2


@pytest.mark.parametrize(
    ("uri", "fmt"), [("s3://b/x.csv", "csv"), ("d/*.jsonl", "json"), ("d/part.json.gz", "json"), ("d/", "parquet")]
)
def test_format_is_inferred_from_the_suffix(uri, fmt):
    assert job_from_dict({**MINIMAL, "source": {"uri": uri}}).source.format == fmt


def test_every_problem_is_reported_at_once_with_its_location():
    spec = {
        **MINIMAL,
        "source": {"uri": "x", "colums": ["a"]},
        "features": [
            {"op": "standard_scal", "columns": ["a"]},
            {"op": "standard_scale", "columns": "a", "wat": 1},
            {"op": "fill_missing", "columns": ["a"]},
            {"columns": ["a"]},
        ],
        "label": {},
        "train": {"num_boost_round": 0},
        "bogus": 1,
    }
    with pytest.raises(SpecError) as info:
        job_from_dict(spec, origin="job.yaml")
    locations = [loc for loc, _ in info.value.problems]
    assert locations == [
        "source.colums",
        "features[0]",
        "features[1].columns",
        "features[1].wat",
        "features[2]",
        "features[3]",
        "label",
        "train.num_boost_round",
        "bogus",
    ]
    text = str(info.value)
    assert text.startswith("job.yaml: invalid job spec (9 problems)")
    assert "did you mean 'columns'?" in text
    assert "unknown op 'standard_scal'" in text and "did you mean 'standard_scale'?" in text
    assert "strategy 'constant' needs a `value`" in text
    assert "Hint:" in text


def test_bad_expressions_are_spec_errors():
    spec = {**MINIMAL, "features": [{"op": "filter", "expr": "a >"}], "label": {"expr": "__import__('os')"}}
    with pytest.raises(SpecError, match=r"features\[0\]\.expr: cannot parse expression 'a >'") as info:
        job_from_dict(spec)
    assert "label.expr: calling '__import__' is not allowed" in str(info.value)


def test_bad_filters_are_rejected():
    spec = {**MINIMAL, "source": {"uri": "x", "filters": [["date", "~", 1]]}}
    with pytest.raises(SpecError, match=r"source.filters.*operator '~'"):
        job_from_dict(spec)


def test_cluster_address_excludes_local_settings():
    with pytest.raises(SpecError, match="only apply to the embedded LocalCluster"):
        job_from_dict({**MINIMAL, "cluster": {"address": "tcp://127.0.0.1:1", "n_workers": 2}})


def test_xgboost_settings_have_one_home():
    with pytest.raises(SpecError, match=r"set `train.objective` instead of `train.params.objective`"):
        job_from_dict({**MINIMAL, "train": {"params": {"objective": "reg:squarederror"}}})


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "features": [{"op": "filter", "expr": "a > 1"}]}))
    job = load_job(path, overrides=["train.num_boost_round=50", "features[0].expr=a > 2", "train.eval_metric=[auc]"])
    assert job.train.num_boost_round == 50
    assert job.features[0].expr == "a > 2"
    assert job.train.eval_metric == ["auc"]
    assert job.name == "job"
    with pytest.raises(SpecError, match=r"train.num_boost_round: Input should be a valid integer"):
        load_job(path, overrides=["train.num_boost_round=lots"])
    with pytest.raises(SpecError, match=r"train.rounds: unknown key"):
        load_job(path, overrides=["train.rounds=5"])
    with pytest.raises(SpecError, match=r"--set features\[3\].expr: features\[3\] is not an existing list item"):
        load_job(path, overrides=["features[3].expr=x"])
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_job(path, overrides=["train.num_boost_round"])


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("source:\n  uri: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_job(path)
    with pytest.raises(SpecError, match="not found"):
        load_job(tmp_path / "missing.yaml")


def test_environment_variables_are_interpolated_and_secrets_redacted(monkeypatch):
    monkeypatch.setenv("DPIPE_TEST_SECRET", "s3cr3t")
    spec = {
        **MINIMAL,
        "source": {"uri": "s3://b/x", "storage_options": {"secret": "${DPIPE_TEST_SECRET}", "key": "${NOPE:-anon}"}},
    }
    job = job_from_dict(spec)
    assert job.source.storage_options == {"secret": "s3cr3t", "key": "anon"}
    dumped = redacted(job)
    assert dumped["source"]["storage_options"] == {"secret": "***", "key": "***"}
    assert "s3cr3t" not in repr(dumped)
    with pytest.raises(SpecError, match="environment variable 'DPIPE_UNSET_VAR' is not set"):
        job_from_dict({**MINIMAL, "source": {"uri": "${DPIPE_UNSET_VAR}"}})


def test_derived_names_cannot_take_reserved_columns():
    spec = {**MINIMAL, "features": [{"op": "derive", "name": "__dpipe_label__", "expr": "1"}]}
    with pytest.raises(SpecError, match=r"features\[0\].name: column names starting with '__dpipe' are reserved"):
        job_from_dict(spec)
