"""Tier 1: bench/same_outputs.py, the check that a refactor left every output row as it was."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "same_outputs.py"


def load():
    spec = importlib.util.spec_from_file_location("same_outputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(root: Path, probs: list[float], seconds: float) -> None:
    """A tiny output: a Parquet folder naming its own path, a model file, a config with a timing."""
    (root / "scores").mkdir(parents=True)
    table = pa.table(
        {"video_id": ["b", "a"], "prob_fake": probs, "faces_uri": [f"{root}/f/b", f"{root}/f/a"]}
    )
    pq.write_table(table, root / "scores" / "part-0.parquet")
    (root / "model.pt").write_bytes(b"weights")
    (root / "stats.json").write_text(json.dumps({"videos": 2, "seconds": seconds, "input": str(root)}))


def test_runs_at_other_paths_and_times_compare_equal_and_a_changed_row_does_not(tmp_path):
    same = load()
    write_run(tmp_path / "before", [0.1, 0.9], seconds=3.0)
    write_run(tmp_path / "after", [0.1, 0.9], seconds=7.5)  # another path, another wall time
    assert same.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    write_run(tmp_path / "changed", [0.1, 0.8], seconds=3.0)
    (tmp_path / "changed" / "model.pt").write_bytes(b"other weights")
    differences = same.Comparison(tmp_path / "before", tmp_path / "changed", []).run()
    assert len(differences) == 2 and differences[0].startswith("rows scores: (2, ")
    assert differences[1] == "bytes model.pt"
    assert same.main([str(tmp_path / "before"), str(tmp_path / "changed")]) == 1
