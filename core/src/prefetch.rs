//! Read-ahead: a background thread that ingests up to N batches ahead of the fastest
//! reader, so that a slow upstream and a slow consumer overlap instead of taking turns.

use std::sync::{Arc, Condvar, Mutex, Weak};

use crate::cache::Shared;

/// Wakes the read-ahead thread when something it waits on may have changed: a reader
/// moved, a batch was stored, the cache closed or went away.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    /// Bumped on every change, so a change between a look and a wait is never missed.
    generation: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        let mut guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        guard.0 += 1;
        self.changed.notify_all();
    }

    /// Tell the thread to end (the cache is gone).
    pub fn stop(&self) {
        let mut guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        guard.1 = true;
        self.changed.notify_all();
    }

    fn generation(&self) -> (u64, bool) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the generation differs from `seen`, or the thread must end.
    fn wait_past(&self, seen: u64) {
        let guard = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = self.changed.wait_while(guard, |(generation, stopped)| {
            *generation == seen && !*stopped
        });
    }
}

/// What one look at the cache tells the read-ahead thread to do.
pub(crate) enum Step {
    /// A batch was pulled: look again.
    Pulled,
    /// Far enough ahead, or no room for another batch: wait for a change.
    Wait,
    /// The stream ended, failed or closed: the thread ends.
    Done,
}

/// Start the read-ahead thread for `shared`. It holds the cache only while it works, so
/// dropping the last handle and reader ends it.
pub(crate) fn spawn(shared: &Arc<Shared>, signal: Arc<Signal>, ahead: u64) {
    let weak = Arc::downgrade(shared);
    // If no thread can be started, readers pull the upstream themselves, as without
    // prefetch: nothing is lost but the overlap.
    let _detached = std::thread::Builder::new()
        .name("batchcorder-prefetch".into())
        .spawn(move || run(weak, signal, ahead));
}

fn run(cache: Weak<Shared>, signal: Arc<Signal>, ahead: u64) {
    loop {
        let (seen, stopped) = signal.generation();
        if stopped {
            return;
        }
        let Some(shared) = cache.upgrade() else {
            return;
        };
        let step = shared.prefetch_step(ahead);
        drop(shared);
        match step {
            Step::Pulled => {}
            Step::Wait => signal.wait_past(seen),
            Step::Done => return,
        }
    }
}
