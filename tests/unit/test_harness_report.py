"""Report rendering: one run, several variants side by side, partial and empty runs."""

import pandas as pd

from harness import report

from tests.helpers.harness_fixtures import cli, fake_record, write_run


def test_single_run_files(tmp_path):
    d = write_run(tmp_path / "run", [fake_record(level=c, index=i) for c in (1, 8) for i in range(3)]
                  + [fake_record(level=8, index=3, ok=False, error="boom", status=500)])
    files = report.render([d], d)
    for kind in ("csv", "md", "throughput", "latency"):
        assert files[kind].is_file() and files[kind].stat().st_size > 0
    csv = pd.read_csv(files["csv"])
    assert csv["level"].tolist() == [1, 8] and csv["failed"].tolist() == [0, 1]
    md = files["md"].read_text()
    assert "| a " in md and "## Failures (1)" in md and "| boom " in md
    assert "![throughput](throughput.png)" in md


def test_compare_variants_side_by_side(tmp_path):
    a = write_run(tmp_path / "a", [fake_record(level=c, index=i) for c in (1, 4) for i in range(2)], "standard")
    b = write_run(tmp_path / "b", [fake_record(label="x", level=c, index=i, done=0.15)
                                   for c in (1, 4) for i in range(2)], "ma")
    out = tmp_path / "cmp"
    p = cli("report", str(a), str(b), "--out", str(out))
    assert p.returncode == 0, p.stderr
    csv = pd.read_csv(out / "summary.csv")
    assert sorted(set(csv["label"])) == ["ma", "standard"] and len(csv) == 4
    tbl = report.table(report.metrics.summarize(report.load([a, b])[0]))
    assert list(tbl.columns[:3]) == ["variant", "conc", "rate"]
    ma = csv[csv["label"] == "ma"]
    assert (ma["req_per_s"] == 2 / 0.15).all()  # label comes from meta.json, not the records
    assert (out / "throughput.png").is_file()


def test_report_of_interrupted_and_empty_runs(tmp_path):
    d = write_run(tmp_path / "int", [fake_record(), fake_record(index=1, ok=False, cancelled=True,
                                                                error="cancelled")], status="interrupted")
    md = report.render([d], d)["md"].read_text()
    assert "interrupted" in md and "## Failures (0)" in md
    e = write_run(tmp_path / "empty", [])
    files = report.render([e], e)
    assert "_no finished requests_" in files["md"].read_text()


def test_report_cli_errors_on_missing_run(tmp_path):
    p = cli("report", str(tmp_path / "nope"))
    assert p.returncode == 2 and "no requests.jsonl" in p.stderr
