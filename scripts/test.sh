#!/usr/bin/env bash
# The test command (README): the whole suite on both backends, then the memory-safety
# runs (AddressSanitizer) of the tests that drop rings with I/O in flight.
# Needs: Linux with io_uring allowed (the portable backend is tested either way), root or
# access to /dev/fuse for the fault-injection filesystem tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (workspace, both backends)"
cargo test --workspace --all-targets
cargo test --workspace --doc
cargo test -p quell --features fuzzing --lib fuzzing
# The futures layer on tokio, and the examples (echo server with a drain, copy with a
# deadline, hung-read cancel), built and run on both backends. The workspace run above
# already enables `tokio` through quell-cli; this keeps them covered if that changes.
cargo test -p quell --features tokio --test futures_tokio --test examples

echo "== loom: the cross-thread request mailbox (Handle -> ring, close racing a post) and block_on's sleep/wake handshake, under every interleaving with up to 3 preemptions"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p quell --release --lib loom

echo "== AddressSanitizer: teardown and cancellation paths"
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test conformance -- \
  drop_ring cancel_races ten_thousand cancel_survives
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test faults -- \
  drop_ring fuse_hundred fuse_hung
# Futures dropped mid-flight: the buffers stay with the ring until the kernel is done (I2).
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test futures -- \
  ten_thousand drops_while dropping dropped
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test lazy -- \
  drop_mid_flight cancel_midway many_lazy
# Linked chains: the kernel owns every step's memory until its last CQE; chains whose
# cleanup close is refused; batches the kernel stops taking part-way.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test linked_chains --test chain_cleanup \
  --test partial_submit
# Descriptor identity and teardown: duplicates held by queued ops, ops detached and then
# canceled at teardown, ops shutdown gives up on (their memory leaked, never freed).
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --target x86_64-unknown-linux-gnu --test fd_identity \
  --test fd_identity_portable --test chain_identity
# Futures and streams dropped under timeout/select with I/O in flight (I13), entry points
# called while the owner sleeps (I3), hostile checkpoints resubmitted.
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="detect_leaks=0" \
  CARGO_TARGET_DIR=target/asan \
  cargo test -p quell --features tokio --target x86_64-unknown-linux-gnu --test futures_contract \
  --test entry_points --test checkpoint_hostile --test cross_thread --test thread_exit

echo "== fuzz: op table + cancel state machine on the fake backend (${QUELL_FUZZ_SECS:-60} s, AddressSanitizer)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
(cd crates/quell/fuzz && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=../../../target/fuzz \
  cargo fuzz run op_table -- -max_total_time="${QUELL_FUZZ_SECS:-60}" -timeout=10)
echo "== fuzz: checkpoints as untrusted input — JSON/postcard decoding and resubmit on real rings (${QUELL_FUZZ_SECS:-60} s)"
(cd crates/quell/fuzz && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=../../../target/fuzz \
  cargo fuzz run checkpoint -- -max_total_time="${QUELL_FUZZ_SECS:-60}" -timeout=10)
