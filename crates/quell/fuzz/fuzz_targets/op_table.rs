//! Fuzzes the op table and the cancel state machine on the fake backend: exactly-once
//! completions, honest outcomes, stats and `ops()` consistent with a model (see
//! `quell::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    quell::fuzzing::run(data);
});
