#!/usr/bin/env bash
# The equal-compute comparison of training objectives (docs/objectives.md): one cpu-default run per objective at the
# authors' defaults, the same pool and the same wall-clock budget, one after another, then the same dev-set probes.
# Usage: bash bench/objectives_compare.sh POOL DEV OUT [MINUTES] [NAME ...]
# Run it on an otherwise idle machine (or run everything else under `nice -n 19`): the budget is wall-clock time.
set -u
POOL=$1; DEV=$2; OUT=$3; MINUTES=${4:-30}; shift 4 2>/dev/null || shift $#
NAMES=${*:-barlow_twins vicreg simclr byol simsiam directpred}
mkdir -p "$OUT/runs" "$OUT/models"
for NAME in $NAMES; do
  # /usr/bin/time records the CPU seconds each run really got, so a run slowed by a neighbour shows it.
  OMP_NUM_THREADS=2 /usr/bin/time -f '{"wall_s": %e, "user_s": %U, "system_s": %S}' -o "$OUT/$NAME.time.json" \
    python -m training fit --recipe cpu-default --data "$POOL" --out "$OUT/runs/$NAME" objective="$NAME" \
      time_budget="$MINUTES" warmup_epochs=0.5 monitor_data="$DEV/openclipart" --no-progress > "$OUT/$NAME.fit.log" 2>&1
  echo "$NAME fit rc=$?" >> "$OUT/summary.txt"
  python -m training export "$OUT/runs/$NAME" --out "$OUT/models/$NAME" --name "cmp/$NAME" --no-dedup-calibration \
    > "$OUT/$NAME.export.log" 2>&1
  python -m devdata.evaluate "$OUT/models/$NAME" --dev "$DEV" --features model --seeds 0 1 2 --jobs 2 \
    --name "cmp/$NAME" --out "$OUT/$NAME.dev.json" > "$OUT/$NAME.eval.log" 2>&1
  echo "$NAME eval rc=$?" >> "$OUT/summary.txt"
done
python -m devdata.evaluate "$OUT/models/barlow_twins" --dev "$DEV" --features random-init raw32 --seeds 0 1 2 --jobs 2 \
  --out "$OUT/baselines.dev.json" > "$OUT/baselines.eval.log" 2>&1
echo "baselines rc=$?" >> "$OUT/summary.txt"
