#!/usr/bin/env bash
# Mount throughput, side by side in one run: 1 GiB sequential write (until close) and read (page
# cache dropped) through a Coffer mount and in a plain directory on the same disk, plus the time
# from close() until everything is on the server. Prints MiB/s and ratios; medians of RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
work=$(mktemp -d /var/tmp/coffer-bench.XXXXXX)
export COFFER_CONFIG_DIR=$work/config COFFER_DATA_DIR=$work/data COFFER_PASSWORD=bench-password COFFER_LOG_LEVEL=warn
command -v bc >/dev/null || apt-get install -y -q bc >/dev/null
coffer() { node dist/cli/main.js "$@"; }
port=$((20000 + RANDOM % 20000))
cleanup() {
  coffer unmount "$work/mnt" >/dev/null 2>&1 || true
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mnt" "$work/plain"
coffer server --data "$work/server" --port "$port" > "$work/server.log" 2>&1 & server_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 0.2; done
token=$(coffer org create bench --server "http://127.0.0.1:$port" --admin-token "$(cat "$work/server/admin-token")" | sed -n 's/^bootstrap token: //p')
coffer org bootstrap bench --server "http://127.0.0.1:$port" --token "$token" --user bench@local >/dev/null
coffer workspace create Bench >/dev/null
coffer mount Bench "$work/mnt" --cache-size 4096 > "$work/mount.log" 2>&1 &
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
mibps() { echo "scale=1; $SIZE_MIB / ($2 - $1)" | bc; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/source.bin"
declare -a cw cr pw pr sy
for i in $(seq "$RUNS"); do
  drop_caches
  t0=$(now); dd if="$work/source.bin" of="$work/plain/f$i" bs=1M status=none; t1=$(now); pw+=("$(mibps "$t0" "$t1")")
  drop_caches
  t0=$(now); dd if="$work/plain/f$i" of=/dev/null bs=1M status=none; t1=$(now); pr+=("$(mibps "$t0" "$t1")")
  drop_caches
  t0=$(now); dd if="$work/source.bin" of="$work/mnt/f$i" bs=1M status=none; t1=$(now); cw+=("$(mibps "$t0" "$t1")")
  coffer sync Bench --wait --timeout 600 >/dev/null; t2=$(now); sy+=("$(echo "$t2 - $t1" | bc)")
  drop_caches
  t0=$(now); dd if="$work/mnt/f$i" of=/dev/null bs=1M status=none; t1=$(now); cr+=("$(mibps "$t0" "$t1")")
  cmp -s "$work/source.bin" "$work/mnt/f$i" || { echo "MISMATCH in run $i"; exit 1; }
  rm -f "$work/plain/f$i"
done
w=$(median "${cw[@]}"); r=$(median "${cr[@]}"); p1=$(median "${pw[@]}"); p2=$(median "${pr[@]}"); s=$(median "${sy[@]}")
printf '\nMount throughput, %s MiB, median of %s runs (MiB/s)\n' "$SIZE_MIB" "$RUNS"
printf '%-28s %10s %10s %8s\n' "" coffer plain-dir ratio
printf '%-28s %10s %10s %8s\n' "sequential write (to close)" "$w" "$p1" "$(echo "scale=2; $w / $p1" | bc)"
printf '%-28s %10s %10s %8s\n' "sequential read (local)" "$r" "$p2" "$(echo "scale=2; $r / $p2" | bc)"
printf '%-28s %10s s\n' "close() -> fully synced" "$s"
