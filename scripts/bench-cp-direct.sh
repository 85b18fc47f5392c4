#!/usr/bin/env bash
# `quell cp --direct` against fio's io_uring engine on a zram device (needs root):
# the same 1 MiB blocks, the same depth, O_DIRECT on both sides. fio runs two jobs
# at once (a sequential read of the source, a sequential write of another file), and
# its copy-equivalent rate is the slower of the two. Prints one line per run.
#
#   sudo scripts/bench-cp-direct.sh [runs] [depth]
#
# It creates /dev/zram0 (6 GiB, lz4) with ext4 on /mnt/quell-zram and removes both
# at the end. Random data is incompressible, so zram's compression is part of the cost
# for both contenders alike.
set -euo pipefail
runs=${1:-3}
depth=${2:-16}
cd "$(dirname "$0")/.."
quell=${QUELL:-target/release/quell}
[ -x "$quell" ] || cargo build --release -p quell-cli
command -v fio >/dev/null || { echo "fio is needed" >&2; exit 1; }
mnt=/mnt/quell-zram
if [ "$(cat /sys/block/zram0/disksize 2>/dev/null || echo x)" != 0 ]; then
  modprobe zram 2>/dev/null || true
  [ "$(cat /sys/block/zram0/disksize)" = 0 ] || { echo "/dev/zram0 is in use" >&2; exit 1; }
fi
cleanup() { umount "$mnt" 2>/dev/null || true; echo 1 > /sys/block/zram0/reset; }
trap cleanup EXIT
echo lz4 > /sys/block/zram0/comp_algorithm
echo 6G > /sys/block/zram0/disksize
mkfs.ext4 -q -F /dev/zram0
mkdir -p "$mnt"
mount /dev/zram0 "$mnt"
dd if=/dev/urandom of="$mnt/src" bs=1M count=1024 oflag=direct status=none
dd if=/dev/urandom of="$mnt/fio.dat" bs=1M count=1024 oflag=direct status=none
for i in $(seq "$runs"); do
  rm -f "$mnt/dst"
  "$quell" cp --no-progress --direct --depth "$depth" --block-size 1M "$mnt/src" "$mnt/dst" 2>&1 |
    sed -n 's/.*in \([0-9.]*\) s, \([0-9.]*\) MiB\/s/quell cp --direct: \2 MiB\/s/p'
  cmp -s "$mnt/src" "$mnt/dst" || { echo "copy differs" >&2; exit 1; }
  rm -f "$mnt/dst"
  fio --output-format=json --ioengine=io_uring --direct=1 --bs=1M --iodepth="$depth" --size=1G \
    --name=r --rw=read --filename="$mnt/src" --name=w --rw=write --filename="$mnt/fio.dat" |
    python3 -c 'import json,sys
j=json.load(sys.stdin)["jobs"]; r=j[0]["read"]["bw"]/1024; w=j[1]["write"]["bw"]/1024
print(f"fio io_uring: read {r:.0f} MiB/s, write {w:.0f} MiB/s, copy-equivalent {min(r,w):.0f} MiB/s")'
done
