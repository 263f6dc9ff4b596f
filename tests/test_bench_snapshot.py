"""bench/faithfulness_snapshot.py --compare: the same snapshot passes, a changed number is
named by its path and fails (the full run is a benchmark, minutes long; its comparison is
what a reviewer reads)."""

import json
import sys

from tests.helpers import run_command

SCRIPT = "bench/faithfulness_snapshot.py"


def test_compare_names_what_differs(tmp_path):
    before = {"rows": [{"method": "random", "deletion_auc": 0.5}], "summary": {"pairs": 3}}
    after = {"rows": [{"method": "random", "deletion_auc": 0.25}], "summary": {"pairs": 3}}
    (tmp_path / "a.json").write_text(json.dumps(before))
    (tmp_path / "b.json").write_text(json.dumps(after))
    same = run_command(
        [sys.executable, SCRIPT, "--compare", tmp_path / "a.json", tmp_path / "a.json"]
    )
    assert same.returncode == 0 and "differing: 0" in same.stdout
    changed = run_command(
        [sys.executable, SCRIPT, "--compare", tmp_path / "a.json", tmp_path / "b.json"]
    )
    assert changed.returncode == 1
    assert "/rows[0]/deletion_auc: 0.5 != 0.25" in changed.stdout
