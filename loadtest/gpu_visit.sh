#!/usr/bin/env bash
# One visit to the GPU machine: everything issue 9 measures there, in one command (see ../shared/gpu/README.md).
#
# Here, first:  make export  (artifacts/default)  and  bash ../shared/gpu/prepare.sh  (fills .gpu/)
# There, after the five chunk commands of that README, with carry [.gpu/ort4, .gpu/wheels, .gpu/bin, artifacts]:
#   bash loadtest/gpu_visit.sh
# Writes under $OUT (or bench/ when OUT is unset): provider-check.json (the load-time check and the CUDA options
# read back from the session) and results-gpu.json (loadtest/gpu_bench.py). DEVICE=cpu runs the same on CPU.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench}
ART=${ART:-artifacts/default}
if [ -f .gpu/bin/device-env.sh ] && [ "$DEVICE" = cuda ]; then  # it is not written for set -e
  set +e; source .gpu/bin/device-env.sh || exit 1; set -e
fi
PY=${PY:-python3}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/seqserve-gpu-bench}
trap 'cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true' EXIT  # the servers' logs come back too, failed or not
timeout 120 "$PY" - "$ART" "$DEVICE" > "$OUT/provider-check.json" <<'PYEOF'
import json, sys, time
from service.runtime import find_artifact, open_checked_session
art, device = find_artifact(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
info = open_checked_session(art, device, threads=1)
print(json.dumps({"provider": info.provider, "provider_options": info.provider_options,
                  "fallback_reason": info.fallback_reason, "check": info.check,
                  "open_seconds": round(time.perf_counter() - t0, 2)}, indent=2))
PYEOF
cat "$OUT/provider-check.json"
timeout ${BENCH_TIMEOUT:-420} "$PY" -m loadtest.gpu_bench --device "$DEVICE" --artifact "$ART" \
  --out "$OUT/results-gpu.json" --work "$WORK" ${GPU_BENCH_ARGS:-}
