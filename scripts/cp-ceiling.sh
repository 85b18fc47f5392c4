#!/usr/bin/env bash
# The ceiling for copying a page-cached file on this machine: GNU cp and `quell cp`
# beside plain-C variants (one or two copy_file_range threads, with and without
# fallocate, a shared mapping of the destination filled by pread, pwrite from a mapping
# of the source), in interleaved rounds; prints the median and range of MiB/s for each.
# Needs gcc.
#
#   scripts/cp-ceiling.sh DIR [rounds] [size]     e.g. scripts/cp-ceiling.sh /dev/shm 7 1G
#
# The source (DIR/quell-ceiling-SIZE.src, random bytes) is kept for the next run.
set -euo pipefail
dir=${1:?usage: cp-ceiling.sh DIR [rounds] [size]}
rounds=${2:-7}
size=${3:-1G}
cd "$(dirname "$0")/.."
quell=${QUELL:-target/release/quell}
[ -x "$quell" ] || cargo build --release -p quell-cli
tool=$(mktemp -d)/cp-ceiling
trap 'rm -rf "$(dirname "$tool")" "$dir/quell-ceiling.dst"' EXIT
gcc -O2 -pthread -o "$tool" scripts/cp-ceiling.c
src=$dir/quell-ceiling-$size.src
dst=$dir/quell-ceiling.dst
[ -f "$src" ] || head -c "$size" /dev/urandom > "$src"
cat "$src" > /dev/null # page-cached
mib=$(( $(stat -c %s "$src") / 1048576 ))
rate() { # command... → MiB/s by wall clock
  rm -f "$dst"
  local t0 t1
  t0=$(date +%s%N); "$@" > /dev/null 2>&1; t1=$(date +%s%N)
  echo $(( mib * 1000000000 / (t1 - t0) ))
}
declare -A runs
names=(gnu-cp quell-cp cfr-1x1024 cfr-2x32 cfr-falloc-1x1024 cfr-falloc-2x32 mmap-pread-2x32 mmap-write-1x1024 mmap-write-2x32)
for ((r = 0; r < rounds; r++)); do
  runs[gnu-cp]+=" $(rate cp "$src" "$dst")"
  runs[quell-cp]+=" $(rate "$quell" cp --no-progress "$src" "$dst")"
  runs[cfr-1x1024]+=" $("$tool" "$src" "$dst" cfr 1 1024)"
  runs[cfr-2x32]+=" $("$tool" "$src" "$dst" cfr 2 32)"
  runs[cfr-falloc-1x1024]+=" $("$tool" "$src" "$dst" cfr-falloc 1 1024)"
  runs[cfr-falloc-2x32]+=" $("$tool" "$src" "$dst" cfr-falloc 2 32)"
  runs[mmap-pread-2x32]+=" $("$tool" "$src" "$dst" mmap-pread 2 32)"
  runs[mmap-write-1x1024]+=" $("$tool" "$src" "$dst" mmap-write 1 1024)"
  runs[mmap-write-2x32]+=" $("$tool" "$src" "$dst" mmap-write 2 32)"
done
echo "$dir, $rounds rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${names[@]}"; do
  read -ra v <<< "${runs[$n]}"
  sorted=$(printf '%s\n' "${v[@]}" | sort -n)
  med=$(echo "$sorted" | sed -n "$(( (${#v[@]} + 1) / 2 ))p")
  printf '%-20s median %5d MiB/s  range %s-%s\n' "$n" "$med" "$(echo "$sorted" | head -1)" "$(echo "$sorted" | tail -1)"
done
