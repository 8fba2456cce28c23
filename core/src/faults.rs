//! Disk I/O fault injection for tests (cargo feature `fault-injection`; absent otherwise).
//!
//! A [`FaultInjector`] set in [`DiskOptions`](crate::disk::DiskOptions) counts the disk
//! tier's I/O operations and makes the n-th one (of the chosen kinds) fail with an errno,
//! as a full disk, a quota or a failing device would. A failing write first leaves a torn,
//! partial message behind, as a real short write does.

#![cfg_attr(not(feature = "fault-injection"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The disk tier's I/O operations that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPoint {
    /// Creating the cache's private directory.
    CreateDirectory,
    /// Creating a segment file.
    CreateSegment,
    /// Sizing a new segment file.
    SizeSegment,
    /// Mapping a new segment file.
    MapSegment,
    /// Writing one IPC message (a batch or a dictionary).
    Write,
}

impl IoPoint {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

#[derive(Debug)]
struct Plan {
    /// Counted operations still to succeed before the failure.
    remaining: AtomicU64,
    errno: i32,
    points: u8,
    fired: AtomicU64,
}

/// Fails one chosen disk operation; shared by clones, so a test can ask what fired.
#[derive(Debug, Clone)]
pub struct FaultInjector(Arc<Plan>);

impl FaultInjector {
    /// Let `succeed` operations of the chosen kinds pass, then fail the next with `errno`.
    pub fn fail_after(succeed: u64, errno: i32) -> Self {
        Self(Arc::new(Plan {
            remaining: AtomicU64::new(succeed),
            errno,
            points: u8::MAX,
            fired: AtomicU64::new(0),
        }))
    }

    /// Count and fail only operations of these kinds.
    pub fn only(self, points: &[IoPoint]) -> Self {
        let plan = Arc::try_unwrap(self.0).expect("configure an injector before sharing it");
        let points = points.iter().fold(0, |bits, p| bits | p.bit());
        Self(Arc::new(Plan { points, ..plan }))
    }

    /// How many operations were failed (0 or 1).
    pub fn fired(&self) -> u64 {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Called before each operation: the error to fail it with, if this is the one.
    pub(crate) fn check(&self, point: IoPoint) -> std::io::Result<()> {
        let plan = &self.0;
        if plan.points & point.bit() == 0 {
            return Ok(());
        }
        let before = plan
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_sub(1))
            });
        if before == Ok(0) && plan.fired.fetch_add(1, Ordering::AcqRel) == 0 {
            return Err(crate::platform::errno_error(plan.errno));
        }
        Ok(())
    }
}

impl PartialEq for FaultInjector {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FaultInjector {}
