"""The `dpipe` command in-process: exit codes, one-message errors, --verbose chains, logging."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import traceback

import pytest
import yaml

from dpipe import cli
from dpipe.errors import SpecError, StorageError
from dpipe.io import source_spec
from tests.conftest import job_dict


@pytest.fixture
def spec_file(demo_root, tmp_path):
    spec = job_dict(demo_root, tmp_path / "bundle", train={"num_boost_round": 3})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dpipe: error:")]


def test_validate_offline_and_online(spec_file, capsys):
    assert cli.main(["validate", "--offline", str(spec_file)]) == 0
    assert "valid spec (source not checked)" in capsys.readouterr().out
    assert cli.main(["validate", str(spec_file)]) == 0
    assert "valid; source has 4 file(s)" in capsys.readouterr().out


def test_a_spec_error_is_one_message_and_exit_2(spec_file, capsys):
    code = cli.main(["validate", str(spec_file), "--set", "train.num_boost_round=0", "--set", "nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(_errors(err)) == 1 and "Traceback" not in err
    assert "train.num_boost_round" in err and "nope" in err  # every problem at once


def test_verbose_shows_the_whole_chain(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "job.yaml"
    missing.parent.mkdir()
    missing.write_text("name: [unclosed")
    assert cli.main(["validate", str(missing), "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "direct cause" in err  # the YAML error that caused it
    assert _errors(err)[0].startswith(f"dpipe: error: {missing}: not valid YAML")


def test_bad_storage_options_are_a_usage_error(capsys):
    assert cli.main(["show", "runs/x", "--storage-options", "{not json"]) == 2
    assert "--storage-options: not valid JSON" in capsys.readouterr().err


def test_runtime_errors_exit_1_and_unexpected_ones_say_so(monkeypatch, spec_file, capsys):
    def storage(args):
        raise StorageError("output.uri: 's3://b/x' does not exist", hint="check the bucket")

    monkeypatch.setitem(cli._COMMANDS, "validate", storage)
    assert cli.main(["validate", str(spec_file)]) == 1
    assert _errors(capsys.readouterr().err) == ["dpipe: error: output.uri: 's3://b/x' does not exist"]

    def bug(args):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli._COMMANDS, "validate", bug)
    assert cli.main(["validate", str(spec_file)]) == 1
    err = capsys.readouterr().err
    assert "dpipe: error: unexpected RuntimeError: boom" in err and "--verbose" in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "validate", interrupted)
    assert cli.main(["validate", str(spec_file)]) == 130
    assert "no output was committed" in capsys.readouterr().err


def test_run_and_predict_on_a_scheduler_log_progress_to_stderr(spec_file, client, tmp_path, capsys, demo_root):
    address = client.scheduler.address
    assert cli.main(["run", str(spec_file), "--scheduler", address, "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["rows"]["read"] == 20_000 and result["bundle_uri"] == str(tmp_path / "bundle")
    assert f"[dpipe] connected to {address}" in err
    assert "[dpipe] fit: done in" in err
    scores = tmp_path / "scores"
    argv = ["predict", str(tmp_path / "bundle"), "--source", str(demo_root / "events"), "--output", str(scores)]
    assert cli.main([*argv, "--scheduler", address, "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"20000 predictions written to {scores}"
    assert "[dpipe]" not in err  # --quiet


def test_show_prints_metrics_and_fitted_state(spec_file, client, tmp_path, capsys):
    assert cli.main(["run", str(spec_file), "--scheduler", client.scheduler.address, "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["show", str(tmp_path / "bundle")]) == 0
    out = capsys.readouterr().out
    assert "best iteration:" in out and "features[4]" in out and "categorical" in out


def test_every_command_has_help():
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    expected = {"run", "watch", "validate", "predict", "lineage", "show", "inspect", "demo-data"}
    expected |= {"report", "register", "registry", "monitor", "flow"}
    assert set(commands) == set(cli._COMMANDS) == expected
    for name, sub in commands.items():
        assert sub.format_help().startswith(f"usage: dpipe {name}"), name


SECRET = "wJalrXUtnFEMIK7MDENG"  # short: pydantic elides the middle of long input reprs


def test_verbose_never_prints_a_credential(tmp_path, capsys):
    source = {"uri": "data/x", "colums": ["a"], "storage_options": {"secret": SECRET}}
    for spec in ({"source": source}, {"source": source, "features": [{"op": "fill_missing", "columns": []}]}):
        bad = tmp_path / "bad.yaml"
        spec = {"name": "t", **spec, "label": {"column": "y"}, "output": {"uri": "runs/x"}}
        bad.write_text(yaml.safe_dump(spec, sort_keys=False))
        assert cli.main(["validate", "--offline", "--verbose", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "source.colums: unknown key" in err and "Traceback" in err
        assert SECRET not in err
    # What `predict --format nope --storage-options ...` validates, with the whole chain printed.
    with pytest.raises(SpecError) as info:
        source_spec({"uri": "data/x", "format": "nope", "storage_options": {"secret": SECRET}})
    chain = "".join(traceback.format_exception(info.value))
    assert "unknown format 'nope'" in chain and SECRET not in chain


def test_xgboost_console_lines_are_debug_lines_of_the_dpipe_logger(spec_file, client):
    """XGBoost prints "Task ... got rank N" from every worker's training thread; dpipe routes them
    to the `dpipe.xgboost` logger, so only `--verbose` shows them, as `[dpipe]` lines. (On the
    session's two workers: starting a LocalCluster is not what is tested.)"""
    overrides = ["--scheduler", client.scheduler.address]

    def run(*flags):
        argv = [sys.executable, "-m", "dpipe.cli", "run", str(spec_file), *overrides, *flags]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    assert "got rank" not in run()
    # --force: the same job on the same data would otherwise be skipped as unchanged.
    ranks = re.findall(r"^\[dpipe\] .*got rank (\d)", run("--verbose", "--force"), flags=re.MULTILINE)
    assert sorted(ranks) == ["0", "1"]
