#!/bin/bash
# How long `make test` and `make test-fast` take, and how much they write to disk, for this commit and
# an earlier one, side by side on this machine (docs/performance.md, "Test suite").
#
# usage: bash benchmarks/test_suite_time.sh [EARLIER_COMMIT] [DISK]
#   EARLIER_COMMIT  default a9a5f9f (before issue 16); DISK: the block device in /proc/diskstats (default vda)
#   ISA=avx2 bash benchmarks/test_suite_time.sh   runs torch as on an AVX2-only CPU (Zen 3)
#
# Each commit is cloned into a temporary folder and gets its own venv (made before timing); the runs go
# one after the other, never at once. The 25 slowest tests of each run are in WORK/*.log.
set -eu
EARLIER=${1:-a9a5f9f}
DISK=${2:-vda}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
ISA_ENV=()
if [ "${ISA:-}" = avx2 ]; then ISA_ENV=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2); fi

sectors() { awk -v d="$DISK" '$3 == d {print $10}' /proc/diskstats; }

for name in earlier this; do
  git clone -q "$REPO" "$WORK/$name"
  [ "$name" = earlier ] && git -C "$WORK/$name" checkout -q "$EARLIER"
  make -C "$WORK/$name" venv tools > "$WORK/$name-venv.log" 2>&1
done

echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; ISA ${ISA:-native}"
echo "| commit | target | seconds | GB written | result |"
echo "|---|---|---|---|---|"
for target in test test-fast; do
  for name in earlier this; do
    before=$(sectors); start=$(date +%s)
    status=0
    env "${ISA_ENV[@]}" PYTEST_ADDOPTS="--durations=25 -p no:cacheprovider" \
      make -C "$WORK/$name" "$target" > "$WORK/$name-$target.log" 2>&1 || status=$?
    seconds=$(( $(date +%s) - start )); written=$(( ($(sectors) - before) * 512 / 100000000 ))
    result=$(grep -E 'passed|failed' "$WORK/$name-$target.log" | tail -1)
    echo "| $(git -C "$WORK/$name" rev-parse --short HEAD) ($name) | make $target | $seconds | $((written / 10)).$((written % 10)) | exit $status: $result |"
  done
done
echo "logs: $WORK"
