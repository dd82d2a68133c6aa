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


# -- the source union: one strict model per kind, chosen by `format` -------------------------------
LINES_MODULE = '''
from dpipe.spec.source import BaseSourceSpec


class LinesSpec(BaseSourceSpec):
    encoding: str = "utf-8"


class Lines:
    """A connector of text lines (only its spec matters when a job is validated)."""

    Spec = LinesSpec
'''


@pytest.fixture
def lines_module(tmp_path, monkeypatch):
    (tmp_path / "spec_lines_connector.py").write_text(LINES_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "spec_lines_connector:Lines"


def _source_problems(source: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        job_from_dict({**MINIMAL, "source": source})
    return info.value.problems


def test_each_format_validates_with_its_own_model():
    from dpipe.spec.source import CSVSourceSpec, JSONSourceSpec, ParquetSourceSpec

    for source, model in [
        ({"uri": "d/x.csv"}, CSVSourceSpec),
        ({"uri": "d/x", "format": "json"}, JSONSourceSpec),
        ({"uri": "d/x.csv", "format": "parquet"}, ParquetSourceSpec),  # explicit wins over the suffix
        ({"uri": "d/x", "format": None}, ParquetSourceSpec),
    ]:
        job = job_from_dict({**MINIMAL, "source": source})
        assert type(job.source) is model and job.source.format == model.model_fields["format"].default
    job = job_from_dict({**MINIMAL, "source": {"uri": "d/x", "filters": [["a", "==", 1]], "partitioning": "none"}})
    assert job.source.filters == [("a", "==", 1)] and job.source.partitioning == "none"


def test_unknown_format_names_the_known_ones():
    assert _source_problems({"uri": "x", "format": "avro"}) == [
        (
            "source.format",
            "unknown format 'avro'; expected one of ['parquet', 'csv', 'json', 'delta', 'iceberg', 'postgresql', 'duckdb'] or a connector's import path"
            " such as 'mypkg.connectors:Lines'",
        )
    ]
    [(loc, msg)] = _source_problems({"uri": "x", "format": "cvs"})
    assert loc == "source.format" and msg.endswith("(did you mean 'csv'?)")


def test_source_errors_are_located_in_the_entry_whatever_its_kind():
    problems = _source_problems({"uri": "x.csv", "colums": ["a"], "partitioning": "flat"})
    assert [loc for loc, _ in problems] == ["source.partitioning", "source.colums"]
    assert problems[1][1] == (
        "unknown key; allowed keys: ['columns', 'filters', 'format', 'partition_size', 'partitioning', 'schema',"
        " 'storage_options', 'uri']"
        " (did you mean 'columns'?)"
    )
    assert _source_problems({"format": "csv"}) == [("source.uri", "required but missing")]
    assert _source_problems("data/x") == [("source", "a source is a mapping such as {uri: data/events} (got 'data/x')")]
    join = {"op": "join", "source": {"uri": "t", "colums": ["a"]}, "on": ["k"]}
    with pytest.raises(SpecError) as info:
        job_from_dict({**MINIMAL, "features": [join]})
    assert [loc for loc, _ in info.value.problems] == ["features[0].source.colums"]


def test_a_connector_outside_dpipe_is_named_by_import_path(lines_module):
    job = job_from_dict({**MINIMAL, "source": {"format": lines_module, "uri": "d/x.txt", "encoding": "latin-1"}})
    assert type(job.source).__name__ == "LinesSpec"
    assert (job.source.format, job.source.encoding) == (lines_module, "latin-1")
    assert redacted(job)["source"]["encoding"] == "latin-1"  # dumps use the kind's own model
    [(loc, msg)] = _source_problems({"format": lines_module, "uri": "x", "encodng": "x"})
    assert loc == "source.encodng" and "allowed keys: ['columns', 'encoding', 'format'" in msg
    [(loc, msg)] = _source_problems({"format": "no_such_module_xyz:Lines", "uri": "x"})
    assert loc == "source.format" and "cannot import source 'no_such_module_xyz:Lines'" in msg
    [(loc, msg)] = _source_problems({"format": "dpipe.spec.base:Strict", "uri": "x"})
    assert "declares no `Spec` model subclassing dpipe.spec.source.BaseSourceSpec" in msg


def test_registered_formats_validate_and_are_inferred_from_their_suffixes(lines_module):
    from dpipe.spec.connectors import KNOWN_SOURCES, register_source

    register_source("lines", lines_module, suffixes=(".txt",))
    try:
        assert job_from_dict({**MINIMAL, "source": {"uri": "d/x.txt"}}).source.format == "lines"
        assert job_from_dict({**MINIMAL, "source": {"uri": "d/x", "format": "lines"}}).source.encoding == "utf-8"
        [(loc, msg)] = _source_problems({"uri": "x", "format": "avro"})
        assert "expected one of ['parquet', 'csv', 'json', 'delta', 'iceberg', 'postgresql', 'duckdb', 'lines']" in msg
    finally:
        del KNOWN_SOURCES["lines"]


def test_source_spec_validates_a_plain_dict():
    from dpipe.spec.source import source_spec

    assert source_spec({"uri": "s.jsonl.gz", "format": None}).format == "json"
    with pytest.raises(SpecError, match=r"features\[1\].source: invalid source \(1 problem\)") as info:
        source_spec({"uri": "x", "format": "avro"}, where="features[1].source")
    [(loc, msg)] = info.value.problems
    assert loc == "features[1].source.format" and msg.startswith("unknown format 'avro'")
