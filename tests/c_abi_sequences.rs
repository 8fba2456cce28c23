//! Random sequences of C ABI calls, checked against a model of the stream: every batch a
//! reader returns is the right one, every error has the right status, and misuse (NULLs,
//! released streams, use after close) is an error code, never a crash.
//!
//! The model lives in tests/support/c_abi_model.rs, shared with the libFuzzer target
//! fuzz/fuzz_targets/c_abi_sequences.rs (which also runs the disk tier under ASan).

#[path = "support/c_abi_model.rs"]
mod c_abi_model;

use c_abi_model::{run_on, Op, Tier};
use proptest::prelude::*;

#[path = "support/stress.rs"]
mod stress;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(|from_start| Op::NewReader { from_start }),
        2 => (any::<bool>(), any::<u8>(), any::<u8>()).prop_map(|(from_start, index, count)| {
            Op::NewShardReader { from_start, index, count }
        }),
        2 => (any::<u8>(), any::<u8>(), any::<bool>(), any::<u8>(), any::<u8>()).prop_map(
            |(seed, window, rows, index, count)| Op::NewShuffledReader { seed, window, rows, index, count }
        ),
        2 => any::<u8>().prop_map(|index| Op::Batch { index }),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(|rows| Op::Take { rows }),
        6 => (0..6usize, 1..6u8).prop_map(|(reader, count)| Op::Read { reader, count }),
        2 => (0..6usize).prop_map(|reader| Op::Release { reader }),
        1 => (0..6usize).prop_map(|reader| Op::ReleaseAgain { reader }),
        1 => Just(Op::IngestAll),
        1 => Just(Op::Stats),
        1 => Just(Op::Close),
        1 => (0..6usize).prop_map(|reader| Op::Misuse { reader }),
    ]
}

fn tier() -> impl Strategy<Value = Tier> {
    prop_oneof![
        2 => Just(Tier::Memory),
        1 => (any::<bool>(), 0..3u8, any::<u16>()).prop_map(|(on_eviction, compression, hot_bytes)| {
            Tier::Disk { on_eviction, compression, hot_bytes }
        }),
    ]
}

proptest! {
    #![proptest_config(stress::config(300))]

    #[test]
    fn call_sequences_match_the_model(
        batches in 0..12i64,
        fail_at in proptest::option::of(0..12i64),
        max_readers in proptest::option::of(1..4u64),
        ops in proptest::collection::vec(op(), 1..40),
        tier in tier(),
    ) {
        let fail_at = fail_at.filter(|&k| k < batches);
        run_on(tier, batches, fail_at, max_readers, ops);
    }
}
