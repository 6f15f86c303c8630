"""`make demo` runs `python -m loopline.demo`: it must finish and show what each stage did."""

from __future__ import annotations

import json

import pytest

from loopline import demo


@pytest.mark.slow
def test_demo_runs_the_existing_stages_and_reports_their_counts(isolated_home, capsys):
    assert demo.main(["--days", "1", "--json"]) == 0
    output = capsys.readouterr().out
    assert "simulated traffic" in output and "ETL per day" in output
    report = json.loads(output[output.index('{\n  "home"') :])
    simulated = report["stages"]["simulate"]
    (day,) = report["stages"]["etl"]
    ingested = day["ingest"]
    assert simulated["events"] > 0
    # Every simulated line was read and accounted for: loaded, duplicate or quarantined.
    assert ingested["lines_read"] == ingested["loaded"] + ingested["duplicates"] + ingested["quarantined"]
    assert ingested["quarantined"] >= 1  # the demo plants malformed lines
    assert (isolated_home / "warehouse.duckdb").is_file()
