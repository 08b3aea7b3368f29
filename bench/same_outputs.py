"""Are two runs' outputs the same rows? For refactors that must not change behaviour.

    python bench/same_outputs.py BEFORE AFTER [--alias PATH ...]

Compares every Parquet folder under BEFORE with the same folder under AFTER as sorted rows (bytes
columns hashed; wall-clock columns set aside), every ``model.pt`` and ``submission.csv`` byte for
byte, and every JSON file with wall-clock keys set aside. The two roots' paths, and any ``--alias``
(the path a run was made at, when its folder was moved since), are replaced by ``ROOT`` first, so
two runs at different paths compare. Prints one line per difference and the count; exits 1 if any.

How it was used for the layout change (issue 27): the same commands (a generated sample,
``jobs/run.py --config configs/demo.yaml`` with small epochs, then ``jobs/rescore.py`` of a second
dump) in a worktree of the commit before and of each commit after, at the same output path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WALL_CLOCK = {
    "scored_at", "seconds", "elapsed_s", "frames_per_s", "steady_frames_per_s", "first_video_s",
    "timings_s", "videos_per_s", "step_seconds", "total_s", "train_per_s",
}  # fmt: skip
SKIP_PARTS = {"_train", "logs", "tensorboard"}  # checkpoints, logs and event files name times


def _plain(value):
    return hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else str(value)


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in WALL_CLOCK}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


class Comparison:
    def __init__(self, before: Path, after: Path, aliases: list[str]):
        self.before, self.after = before.resolve(), after.resolve()
        self.roots = sorted({str(self.before), str(self.after), *aliases}, key=len, reverse=True)
        self.differences: list[str] = []

    def norm(self, text: str) -> str:
        for root in self.roots:
            text = text.replace(root, "ROOT")
        return text

    def rows(self, folder: Path) -> tuple[int, str] | None:
        files = sorted(folder.glob("*.parquet"))
        if not files:
            return None
        table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        table = table.select([c for c in table.column_names if c not in WALL_CLOCK])
        rows = sorted(self.norm(json.dumps(r, sort_keys=True, default=_plain)) for r in table.to_pylist())
        return table.num_rows, hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]

    def kept(self, path: Path, root: Path) -> bool:
        return not SKIP_PARTS & set(path.relative_to(root).parts)

    def run(self) -> list[str]:
        folders = sorted({p.parent.relative_to(self.before) for p in self.before.rglob("*.parquet")})
        for rel in folders:
            if not self.kept(self.before / rel, self.before):
                continue
            a, b = self.rows(self.before / rel), self.rows(self.after / rel)
            if a != b:
                self.differences.append(f"rows {rel}: {a} vs {b}")
        for name in ("model.pt", "submission.csv"):
            for p in sorted(self.before.rglob(name)):
                q = self.after / p.relative_to(self.before)
                if self.kept(p, self.before) and (not q.exists() or p.read_bytes() != q.read_bytes()):
                    self.differences.append(f"bytes {p.relative_to(self.before)}")
        for p in sorted(self.before.rglob("*.json")):
            if not self.kept(p, self.before):
                continue
            q = self.after / p.relative_to(self.before)
            if not q.exists():
                self.differences.append(f"missing {p.relative_to(self.before)}")
                continue
            a = _scrub(json.loads(self.norm(p.read_text())))
            b = _scrub(json.loads(self.norm(q.read_text())))
            if a != b:
                keys = sorted(k for k in a if a.get(k) != b.get(k)) if isinstance(a, dict) else "?"
                self.differences.append(f"json {p.relative_to(self.before)}: {keys}")
        return self.differences


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--alias", action="append", default=[], help="a path a run was made at (moved since)")
    args = p.parse_args(argv)
    differences = Comparison(args.before, args.after, args.alias).run()
    for line in differences:
        print(line)
    print(f"{len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
