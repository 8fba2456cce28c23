//! The last reference to an evicted batch is dropped with no lock of the cache held:
//! releasing a producer's array may need a lock of the producer's own (Python's GIL),
//! whose holder may be calling into the cache.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use batchcorder_core::{CacheOptions, StreamCache};

/// Values whose release takes `producer_lock`, as a Python-backed buffer takes the GIL.
struct LockedRelease {
    values: Vec<i64>,
    producer_lock: Arc<Mutex<()>>,
    releasing: Arc<AtomicBool>,
}

impl Drop for LockedRelease {
    fn drop(&mut self) {
        self.releasing.store(true, Ordering::SeqCst);
        let _held = self.producer_lock.lock().unwrap();
    }
}

fn batch_owned_by(owner: LockedRelease, schema: &Arc<Schema>) -> RecordBatch {
    let (pointer, len) = (owner.values.as_ptr(), owner.values.len());
    let pointer = NonNull::new(pointer as *mut u8).unwrap();
    // SAFETY: the owner keeps the values alive and in place as long as the buffer.
    let buffer = unsafe { Buffer::from_custom_allocation(pointer, len * 8, Arc::new(owner)) };
    let ids = Int64Array::new(ScalarBuffer::new(buffer, 0, len), None);
    RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap()
}

#[test]
fn an_evicted_batch_is_released_after_the_state_lock() {
    let producer_lock = Arc::new(Mutex::new(()));
    let releasing = Arc::new(AtomicBool::new(false));
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batches: Vec<_> = (0..2)
        .map(|i| {
            let owner = LockedRelease {
                values: vec![i; 8],
                producer_lock: producer_lock.clone(),
                releasing: releasing.clone(),
            };
            Ok(batch_owned_by(owner, &schema))
        })
        .collect();
    let upstream = Box::new(RecordBatchIterator::new(batches, schema.clone()));
    let options = CacheOptions {
        max_readers: Some(2),
        ..Default::default()
    };
    let cache = StreamCache::new(upstream, options).unwrap();
    let mut ahead = cache.reader(true).unwrap();
    let behind = cache.reader(true).unwrap();
    drop(ahead.next_batch().unwrap().unwrap()); // only the cache holds batch 0 now

    let held = producer_lock.lock().unwrap();
    thread::scope(|scope| {
        // Dropping the reader still at batch 0 evicts it: the cache drops its last reference.
        let evicting = scope.spawn(move || drop(behind));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !releasing.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "batch 0 was never released");
            thread::sleep(Duration::from_millis(1));
        }
        // The release waits for the producer's lock, which this thread holds; the cache
        // must still answer it.
        let (sender, answer) = mpsc::channel();
        let cache = &cache;
        scope.spawn(move || sender.send(cache.stats().map(|s| s.batches_evicted)));
        let stats = answer.recv_timeout(Duration::from_secs(10));
        drop(held);
        evicting.join().unwrap();
        assert_eq!(
            stats
                .expect("stats() blocked: the cache held its lock across a release")
                .unwrap(),
            1
        );
    });
}
