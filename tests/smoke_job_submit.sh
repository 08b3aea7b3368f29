#!/usr/bin/env bash
# Cluster smoke test (a CI step after pytest): a real local head with token authentication on, as
# every dfpipe cluster runs; proof that a submit without the token is refused; then the jobs
# submitted with `ray job submit --working-dir .` exactly as on a cluster, their outputs checked,
# the head stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/dfpipe-smoke.XXXXXX)
# The head's processes inherit this tag; cleanup ends exactly them (`ray stop` would end every Ray here).
export DFPIPE_CLUSTER="smoke-$$"
cleanup() { python tests/cluster.py kill "$DFPIPE_CLUSTER" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

python -m dfpipe.sample "$WORK/data" --videos 4 --frames 20 --parts 2 --portrait-size 270x480 --portrait-frames 6
# One token for this head, given to it and to the clients below, as on a cluster: set explicitly,
# because `ray start --head` turns authentication on only with RAY_AUTH_MODE=token.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_AUTH_TOKEN
ray start --head --num-cpus 2 --disable-usage-stats --include-dashboard=true >/dev/null
export RAY_ADDRESS=http://127.0.0.1:8265

refused() {  # a submit that must not run: it fails and says why
  local log="$WORK/refused.log"
  if "$@" ray job submit -- python -c 'print("ran")' >"$log" 2>&1; then
    echo "smoke: FAILED: a submit was accepted with: $*" >&2; cat "$log" >&2; exit 1
  fi
  if grep -q '^ran$' "$log"; then echo "smoke: FAILED: the job ran" >&2; exit 1; fi
  grep -q 'AuthenticationError' "$log" || { echo "smoke: FAILED: refused for another reason:" >&2; cat "$log" >&2; exit 1; }
}
refused env RAY_AUTH_TOKEN=not-the-token                                      # a wrong token
refused env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=disabled HOME="$WORK/no-home"     # no token at all
echo "smoke: submits without the cluster's token are refused"

submit() { ray job submit --working-dir . -- "$@"; }
submit python jobs/run.py --input "$WORK/data" --output "$WORK/run" \
  extract.face_size=64 extract.max_frames=20 segment.window_len=8 segment.window_stride=4 \
  segment.val_parts=dfdc_train_part_1 train_embedder.face_size=80 train_embedder.epochs=1 \
  train_embedder.batch_size=8 train_embedder.steps_per_epoch=2 train_embedder.num_workers=1 \
  train_classifier.epochs=2 train_classifier.batch_size=8 train_classifier.num_workers=1
submit python jobs/rescore.py --input "$WORK/data/dfdc_train_part_1" --model "$WORK/run/models/classifier" \
  --output "$WORK/rescore"
submit python jobs/rescore.py --input "$WORK/data/dfdc_train_part_1" --model "$WORK/run/models/classifier" \
  --output "$WORK/rescore"

python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
from dfpipe.catalog import build_catalog
from dfpipe.outputs import read_manifest, read_scores
from dfpipe.jobs.rescore import dump_output

work = Path(sys.argv[1])
manifest = read_manifest(str(work / "run/extract"))  # the pipeline's extract step, as a submitted job
assert manifest.num_rows == build_catalog(str(work / "data")).num_rows, "extract: every video in the manifest"
assert (work / "run/score/report/report.json").exists(), "pipeline: evaluation report"
dump = work / "data/dfdc_train_part_1"
scores = read_scores(dump_output(str(work / "rescore"), str(dump)), None).to_pandas()
assert len(scores) == len(list(dump.glob("*.mp4"))) and scores.video_id.is_unique, "rescore: each video once"
stats = json.loads((work / "rescore/rescore_stats.json").read_text())
assert all(d["scored_this_run"] == 0 for d in stats["dumps"].values()), "second rescore: nothing new"
print("smoke: ray job submit of the pipeline (extract included) and rescore: OK")
PY
