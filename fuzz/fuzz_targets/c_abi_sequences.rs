//! Random sequences of C ABI calls under AddressSanitizer, checked against the model the
//! proptest tests/c_abi_sequences.rs uses (tests/support/c_abi_model.rs), on both tiers.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run c_abi_sequences --sanitizer address
//!
//! or `make -f mk/fuzz.mk fuzz-smoke` from the repository root.

#![no_main]

#[path = "../../tests/support/c_abi_model.rs"]
mod c_abi_model;

use arbitrary::Arbitrary;
use c_abi_model::{run_on, Op, Tier};
use libfuzzer_sys::fuzz_target;

/// Longest op sequence run (the proptest uses up to 40).
const MAX_OPS: usize = 64;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Batches in the upstream: `% 12`.
    batches: u8,
    /// Position at which the upstream fails (`% 12`; ignored past the end).
    fail_at: Option<u8>,
    /// Reader cap: `1 + % 3`.
    max_readers: Option<u8>,
    tier: Tier,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let batches = i64::from(input.batches % 12);
    let fail_at = input
        .fail_at
        .map(|k| i64::from(k % 12))
        .filter(|&k| k < batches);
    let max_readers = input.max_readers.map(|m| 1 + u64::from(m % 3));
    let mut ops = input.ops;
    ops.truncate(MAX_OPS);
    run_on(input.tier, batches, fail_at, max_readers, ops);
});
