#!/usr/bin/env bash
# Side-by-side file-system benchmark, one run: Coffer (one row per available FUSE transport) against
# gocryptfs, securefs, CryFS, a plain directory and tmpfs, all backed by the same disk (tmpfs aside).
#
#   1 sequential write of SIZE_MIB until close()          4 untar of a ~TREE_FILES-file tree, ls -lR, rm -rf
#   2 sequential read, page cache dropped (local data)     5 close() -> fully synced, vs a raw upload of the
#   3 cold read from the server, local cache emptied         same bytes with the same HTTP client
#                                                          6 peak RSS of the Coffer mount process
#
# Medians of RUNS runs. Environment: SIZE_MIB (1024), RUNS (3), TREE_FILES (5000), PEERS ("gocryptfs
# securefs cryfs"), TRANSPORTS ("libfuse3 fuse-native"), QUICK=1 (128 MiB, 1 run, 1,000 files).
# Installs what it needs (apt) when missing. Run as root (drop_caches, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QUICK:-0}" = 1 ]; then : "${SIZE_MIB:=128}" "${RUNS:=1}" "${TREE_FILES:=1000}"; fi
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
TREE_FILES=${TREE_FILES:-5000}
PEERS=${PEERS:-gocryptfs securefs cryfs}
TRANSPORTS=${TRANSPORTS:-libfuse3 fuse-native}
PW=bench-password

need=""
command -v bc >/dev/null || need="$need bc"
for p in $PEERS; do command -v "$p" >/dev/null || need="$need $p"; done
if [ -n "$need" ]; then
  echo "installing:$need" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends $need >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $need >/dev/null; } || true
fi

work=$(mktemp -d /var/tmp/coffer-bench.XXXXXX)
export COFFER_CONFIG_DIR=$work/config COFFER_DATA_DIR=$work/data COFFER_PASSWORD=$PW COFFER_LOG_LEVEL=warn
coffer() { node dist/cli/main.js "$@"; }
mounts=()
server_pid=""
cleanup() {
  for m in "${mounts[@]}"; do mountpoint -q "$m" && { coffer unmount "$m" >/dev/null 2>&1 || fusermount -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }; done
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }
load() { cut -d' ' -f1 /proc/loadavg; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else print a[int((NR+1)/2)]}'; }
rate() { echo "scale=1; $SIZE_MIB / ($2 - $1)" | bc; }
secs() { echo "scale=2; ($2 - $1) / 1" | bc; }
ratio() { if [ "$1" = - ] || [ "$2" = - ] || [ -z "$1" ] || [ -z "$2" ]; then echo -; else echo "scale=2; $1 / $2" | bc; fi; }

# ---- inputs: the source file and a deterministic tree (same bytes every run and every machine)
echo "preparing ${SIZE_MIB} MiB source file and a ${TREE_FILES}-file tree in $work ..." >&2
node -e '
  const { createCipheriv } = require("node:crypto"); const fs = require("node:fs");
  const c = createCipheriv("aes-128-ctr", Buffer.alloc(16, 7), Buffer.alloc(16));
  const fd = fs.openSync(process.argv[1], "w"); const z = Buffer.alloc(1 << 20);
  for (let i = 0; i < +process.argv[2]; i++) fs.writeSync(fd, c.update(z));
  fs.closeSync(fd);' "$work/source.bin" "$SIZE_MIB"
node -e '
  // ~TREE_FILES files in nested folders, sizes from a fixed PRNG (median ~2 KiB, a few up to 256 KiB).
  const fs = require("node:fs"); const path = require("node:path");
  const [root, n] = [process.argv[1], +process.argv[2]];
  let s = 42; const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296);
  const buf = Buffer.alloc(256 * 1024); for (let i = 0; i < buf.length; i++) buf[i] = 32 + (i * 7919 % 95);
  for (let i = 0; i < n; i++) {
    const dir = path.join(root, `d${i % 40}`, `s${(i >> 3) % 12}`);
    fs.mkdirSync(dir, { recursive: true });
    const size = Math.min(buf.length, Math.floor(Math.exp(rnd() * 12.5)));
    fs.writeFileSync(path.join(dir, `f${i}.txt`), buf.subarray(0, size));
  }' "$work/tree" "$TREE_FILES"
tar -C "$work/tree" -cf "$work/tree.tar" . && rm -rf "$work/tree"
tree_mib=$(du -m "$work/tree.tar" | cut -f1)

# ---- one row: $1 name, $2 mount point; fills R_* (medians) and the load seen during the row
declare -A W R CR UT LS RM SY LD RSS E2E
run_fs() {
  local name=$1 mnt=$2 i t0 t1 t2 arm store
  local -a w=() r=() ut=() ls=() rm=() sy=() e2e=()
  local l0; l0=$(load)
  for i in $(seq "$RUNS"); do
    drop_caches
    store=""; arm="$work/arm.${name//\//_}.$i"
    if [ -n "${COFFER_STORE:-}" ]; then
      store=$COFFER_STORE
      node bench/wait-synced.mjs "$store" "$arm" > "$arm.synced" &
    fi
    t0=$(now); dd if="$work/source.bin" of="$mnt/big$i" bs=1M status=none; t1=$(now)
    w+=("$(rate "$t0" "$t1")")
    if [ -n "$store" ]; then
      touch "$arm"; wait $!
      t2=$(cat "$arm.synced"); sy+=("$(secs "$t1" "$t2")"); e2e+=("$(rate "$t0" "$t2")")
    fi
    drop_caches
    t0=$(now); dd if="$mnt/big$i" of=/dev/null bs=1M status=none; t1=$(now); r+=("$(rate "$t0" "$t1")")
    cmp -s "$work/source.bin" "$mnt/big$i" || { echo "MISMATCH: $name run $i" >&2; exit 1; }
    rm -f "$mnt/big$i"
    drop_caches
    mkdir -p "$mnt/tree$i"
    t0=$(now); tar -C "$mnt/tree$i" -xf "$work/tree.tar"; t1=$(now); ut+=("$(secs "$t0" "$t1")")
    drop_caches
    t0=$(now); ls -lR "$mnt/tree$i" > /dev/null; t1=$(now); ls+=("$(secs "$t0" "$t1")")
    t0=$(now); rm -rf "$mnt/tree$i"; t1=$(now); rm+=("$(secs "$t0" "$t1")")
    # Untimed: the next run starts with nothing left to upload (a sync still going would share its cores).
    if [ -n "$store" ]; then coffer sync Bench --wait --timeout 1800 >/dev/null 2>&1 || true; fi
  done
  W[$name]=$(median "${w[@]}"); R[$name]=$(median "${r[@]}"); UT[$name]=$(median "${ut[@]}")
  LS[$name]=$(median "${ls[@]}"); RM[$name]=$(median "${rm[@]}")
  SY[$name]=$(median "${sy[@]+"${sy[@]}"}"); E2E[$name]=$(median "${e2e[@]+"${e2e[@]}"}")
  LD[$name]="$l0/$(load)"
  echo "  $name: write ${W[$name]} MiB/s, read ${R[$name]} MiB/s, untar ${UT[$name]} s, ls -lR ${LS[$name]} s, rm -rf ${RM[$name]} s${SY[$name]:+, close->synced ${SY[$name]} s} (load ${LD[$name]})" >&2
}

rows=()
# ---- references
mkdir -p "$work/plain"; mounts+=("$work/plain")
rows+=(plain); run_fs plain "$work/plain"
mkdir -p "$work/tmpfs"; mount -t tmpfs -o size=$((SIZE_MIB + tree_mib * 2 + 256))m bench "$work/tmpfs"; mounts+=("$work/tmpfs")
rows+=(tmpfs); run_fs tmpfs "$work/tmpfs"; umount "$work/tmpfs"
for p in $PEERS; do
  command -v "$p" >/dev/null || { echo "  $p: not installed, skipped" >&2; continue; }
  mkdir -p "$work/$p.cipher" "$work/$p"; mounts+=("$work/$p")
  case $p in
    gocryptfs) gocryptfs -init -q -extpass "echo $PW" "$work/$p.cipher" >/dev/null && gocryptfs -q -nosyslog -extpass "echo $PW" "$work/$p.cipher" "$work/$p" ;;
    securefs) securefs create --pass "$PW" "$work/$p.cipher" >/dev/null && securefs mount -b --attr-timeout 1 --pass "$PW" --log "$work/securefs.log" "$work/$p.cipher" "$work/$p" >/dev/null ;;
    cryfs) echo "$PW" | CRYFS_FRONTEND=noninteractive CRYFS_NO_UPDATE_CHECK=true cryfs -c "$work/cryfs.config" "$work/$p.cipher" "$work/$p" >/dev/null 2>&1 ;;
  esac || { echo "  $p: mount failed, skipped" >&2; continue; }
  for _ in $(seq 50); do mountpoint -q "$work/$p" && break; sleep 0.1; done
  rows+=("$p"); run_fs "$p" "$work/$p"
  fusermount -u "$work/$p" 2>/dev/null || umount -l "$work/$p"
done

# ---- Coffer: a server on loopback, one mount per transport
port=$((20000 + RANDOM % 20000))
node dist/cli/main.js server --data "$work/server" --port "$port" > "$work/server.log" 2>&1 & server_pid=$! # node itself: killable by PID
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break; sleep 0.2; done
token=$(coffer org create bench --server "http://127.0.0.1:$port" --admin-token "$(cat "$work/server/admin-token")" | sed -n 's/^bootstrap token: //p')
coffer org bootstrap bench --server "http://127.0.0.1:$port" --token "$token" --user bench@local >/dev/null
coffer workspace create Bench >/dev/null
device_file=$(ls "$COFFER_CONFIG_DIR"/devices/*.device)
mkdir -p "$work/coffer"; mounts+=("$work/coffer")
mount_coffer() { # $1 transport; sets mount_pid
  COFFER_FUSE_TRANSPORT=$1 node dist/cli/main.js mount Bench "$work/coffer" --cache-size 4096 > "$work/mount.$1.log" 2>&1 & mount_pid=$!
  for _ in $(seq 150); do mountpoint -q "$work/coffer" && return 0; kill -0 "$mount_pid" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}
unmount_coffer() { coffer unmount "$work/coffer" >/dev/null 2>&1 || true; while kill -0 "$mount_pid" 2>/dev/null; do sleep 0.1; done; }
for tr in $TRANSPORTS; do
  name="coffer/$tr"
  if ! mount_coffer "$tr"; then echo "  $name: mount failed (see below), skipped" >&2; tail -3 "$work/mount.$tr.log" >&2; unmount_coffer; continue; fi
  COFFER_STORE=$(find "$COFFER_DATA_DIR" -regextype posix-extended -regex '.*/[0-9a-f]{32}\.sqlite' | head -1)
  rows+=("$name"); COFFER_STORE=$COFFER_STORE run_fs "$name" "$work/coffer"
  # 3: cold read. A file written and synced, then the local store emptied: every block from the server.
  dd if="$work/source.bin" of="$work/coffer/cold" bs=1M status=none
  coffer sync Bench --wait --timeout 1800 >/dev/null 2>&1
  RSS[$name]=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$mount_pid/status")
  cr=()
  for i in $(seq "$RUNS"); do
    unmount_coffer
    rm -rf "$COFFER_STORE" "$COFFER_STORE"-wal "$COFFER_STORE"-shm "$COFFER_STORE".blocks
    mount_coffer "$tr" || { echo "  $name: remount failed" >&2; break; }
    drop_caches
    t0=$(now); dd if="$work/coffer/cold" of=/dev/null bs=1M status=none; t1=$(now); cr+=("$(rate "$t0" "$t1")")
  done
  CR[$name]=$(median "${cr[@]+"${cr[@]}"}")
  rss_now=$(awk '/VmHWM/ {printf "%d", $2 / 1024}' "/proc/$mount_pid/status")
  [ "$rss_now" -gt "${RSS[$name]}" ] && RSS[$name]=$rss_now
  rm -f "$work/coffer/cold"
  coffer sync Bench --wait --timeout 1800 >/dev/null 2>&1 || true
  unmount_coffer
  echo "  $name: cold read ${CR[$name]} MiB/s, peak RSS ${RSS[$name]} MiB" >&2
done

# 5: the yardstick. The same bytes, the same server, the same HTTP client and concurrency, no crypto.
raw=()
for i in $(seq "$RUNS"); do raw+=("$(node --import tsx bench/raw-upload.ts "$device_file" "$work/source.bin" 8)"); done
RAW=$(median "${raw[@]}")
RAW_RATE=$(echo "scale=1; $SIZE_MIB / $RAW" | bc)

# ---- the table
cores=$(nproc)
printf '\nCoffer side-by-side benchmark: %s MiB files, %s-file tree (%s MiB tar), median of %s runs, %s cores, %s\n' "$SIZE_MIB" "$TREE_FILES" "$tree_mib" "$RUNS" "$cores" "$(date -u +%FT%TZ)"
fmt='%-20s %9s %9s %9s %8s %8s %8s %9s %9s %8s %11s\n'
printf "$fmt" "" "write" "read" "cold read" "untar" "ls -lR" "rm -rf" "->synced" "e2e" "peak RSS" "load 1m"
printf "$fmt" "" "MiB/s" "MiB/s" "MiB/s" "s" "s" "s" "s" "MiB/s" "MiB" "start/end"
for n in "${rows[@]}"; do
  printf "$fmt" "$n" "${W[$n]}" "${R[$n]}" "${CR[$n]:--}" "${UT[$n]}" "${LS[$n]}" "${RM[$n]}" "${SY[$n]:--}" "${E2E[$n]:--}" "${RSS[$n]:--}" "${LD[$n]}"
done
printf "$fmt" "raw upload" "" "" "" "" "" "" "$RAW" "$RAW_RATE" "" ""
g=gocryptfs
if [ -n "${W[$g]:-}" ]; then
  printf '\nRatios against gocryptfs (goal in brackets):\n'
  printf '%-20s %10s %10s %12s %12s %12s %10s\n' "" "write[>=1]" "read[>=1]" "cold/gc[>=.7]" "untar[<=1.5]" "sync[>=.8]" "RSS[<=300]"
  for n in "${rows[@]}"; do
    case $n in coffer/*) ;; *) continue ;; esac
    sync_ratio=-; [ "${SY[$n]:--}" != - ] && sync_ratio=$(echo "scale=2; $RAW / ${SY[$n]}" | bc)
    printf '%-20s %10s %10s %12s %12s %12s %10s\n' "$n" "$(ratio "${W[$n]}" "${W[$g]}")" "$(ratio "${R[$n]}" "${R[$g]}")" "$(ratio "${CR[$n]:--}" "${R[$g]}")" "$(ratio "${UT[$n]}" "${UT[$g]}")" "$sync_ratio" "${RSS[$n]:--}"
  done
  printf 'sync ratio = raw upload time / close()->synced time; e2e = bytes / (write start -> synced).\n'
fi
