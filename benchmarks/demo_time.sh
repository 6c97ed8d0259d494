#!/usr/bin/env bash
# Wall time and peak memory of `apoda demo` from a clean cache (issue 7: <= 10 min, <= 4 GB on
# 2 CPU cores). APODA_CACHE and the run folder are fresh temporary directories, so MiniCity is
# generated and every run trained from scratch; both are removed afterwards.
#
#   benchmarks/demo_time.sh                 # the full demo (about 10 min)
#   benchmarks/demo_time.sh --fast          # the smoke schedule, to check this script
#   benchmarks/demo_time.sh --imagenet      # apoda demo --imagenet (the paper's regime) into
#                                           # results/demo_time_imagenet.json
#   benchmarks/demo_time.sh --no-self-training  # the demo without its DACS row into
#                                           # results/demo_time_no_selftraining.json
#   OUT=path.json benchmarks/demo_time.sh   # another result file
#   KEEP=dir benchmarks/demo_time.sh        # keep the demo's output folder (table, report) in dir
#
# Peak memory is the maximum resident set size from GNU time (`/usr/bin/time -v`), or, where
# that is missing, from Python's resource.getrusage(RUSAGE_CHILDREN) around the command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
FAST=false
IMAGENET=false
SELF_TRAINING=default
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=true ;;
    --imagenet) IMAGENET=true ;;
    --no-self-training) SELF_TRAINING=off ;;
    *)
      echo "demo_time.sh: unknown argument $arg (expected --fast, --imagenet or --no-self-training)" >&2
      exit 2 ;;
  esac
done
if $IMAGENET; then
  OUT="${OUT:-$ROOT/benchmarks/results/demo_time_imagenet.json}"
elif [ "$SELF_TRAINING" = off ]; then
  OUT="${OUT:-$ROOT/benchmarks/results/demo_time_no_selftraining.json}"
else
  OUT="${OUT:-$ROOT/benchmarks/results/demo_time.json}"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export APODA_CACHE="$WORK/cache"
mkdir -p "$APODA_CACHE"
DEMO=("$PYTHON" -c 'import sys; from apoda.cli import main; sys.exit(main())' demo --out "${KEEP:-$WORK/runs}")
if $FAST; then DEMO+=(--fast); fi
if $IMAGENET; then DEMO+=(--imagenet); fi
if [ "$SELF_TRAINING" = off ]; then DEMO+=(--no-self-training); fi

if [ -x /usr/bin/time ]; then
  TOOL="/usr/bin/time -v"
  /usr/bin/time -v -o "$WORK/time.txt" "${DEMO[@]}" | tee "$WORK/demo.log"
  # GNU time: "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.34" and RSS in kbytes.
  WALL="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/time.txt" \
    | awk -F: '{s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s}')"
  RSS_KB="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt")"
else
  TOOL="python resource.getrusage(RUSAGE_CHILDREN)"
  read -r WALL RSS_KB < <("$PYTHON" - "${DEMO[@]}" <<'EOF' 3>&1 1>&2
import os, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
wall = time.perf_counter() - start
rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
os.write(3, f"{wall:.2f} {rss_kb}\n".encode())
EOF
  )
fi

mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$OUT" "$WALL" "$RSS_KB" "$FAST" "$TOOL" "$IMAGENET" "$SELF_TRAINING" <<'EOF'
import datetime, json, os, sys
out, wall, rss_kb, fast, tool, imagenet, self_training = sys.argv[1:]
wall_s, peak_mb = float(wall), int(rss_kb) / 1024
result = {
    "command": "apoda demo" + (" --fast" if fast == "true" else "")
    + (" --imagenet" if imagenet == "true" else "")
    + (" --no-self-training" if self_training == "off" else ""),
    "wall_s": round(wall_s, 1),
    "wall_min": round(wall_s / 60, 2),
    "peak_rss_mb": round(peak_mb, 1),
    "targets": {"wall_min": 10, "peak_rss_mb": 4096},
    "meets_targets": wall_s <= 600 and peak_mb <= 4096,
    "measured_with": tool,
    "clean_cache": True,
    "cpu_count": os.cpu_count(),
    "load_average_1_5_15_at_end": [round(v, 2) for v in os.getloadavg()],
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
}
with open(out, "w") as f:
    f.write(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
EOF
