// The C++ wrapper's own behaviour: empty objects are zeroed, failures keep their status and
// kind, and each part of the C API it wraps (options, casts, views, persist, open, share)
// works through it.
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "batchcorder.hpp"
#include "check.h"
#include "portable.h"
#include "producer.h"

// What `call` threw: its status and kind, or BC_OK if it returned.
struct Failure {
  BcStatus status;
  BcErrorKind kind;
};

template <typename F>
static Failure failure_of(F &&call) {
  try {
    call();
  } catch (const batchcorder::Error &err) {
    return {err.status(), err.kind()};
  }
  return {BC_OK, BC_ERROR_KIND_NONE};
}

template <typename F>
static BcStatus status_of(F &&call) {
  return failure_of(call).status;
}

// Read `reader` to its end: its batch count.
static int drain(batchcorder::Reader &reader) {
  int batches = 0;
  while (reader.next()) batches++;
  return batches;
}

// A requested schema {id: int32, x: float64}, owned by the caller and never released.
struct Requested {
  ArrowSchema top{}, id{}, x{};
  ArrowSchema *kids[2] = {&id, &x};
  Requested() {
    top.format = "+s";
    top.n_children = 2;
    top.children = kids;
    id.format = "i";
    id.name = "id";
    id.flags = 2;  // ARROW_FLAG_NULLABLE
    x.format = "g";
    x.name = "x";
  }
};

static void test_options_casts_and_views() {
  // Options: every setter, and validate() naming what is wrong before a stream is handed over.
  CHECK(status_of([] { batchcorder::Options().prefetch(0); }) == BC_INVALID_ARGUMENT, "prefetch 0 is refused");
  CHECK(status_of([] { batchcorder::Options().persist(""); }) == BC_INVALID_ARGUMENT, "an empty persist path is refused");
  try {
    batchcorder::Options().memory_capacity(0).validate();
    CHECK(false, "memory_capacity 0 without the disk tier is refused");
  } catch (const batchcorder::Error &err) {
    CHECK(err.status() == BC_INVALID_ARGUMENT && std::strstr(err.what(), "memory_capacity") != nullptr,
          "validate() names the option");
  }
  ArrowArrayStream ahead_up = make_producer(5, 10, -1, 0, nullptr);
  batchcorder::Cache ahead(&ahead_up, batchcorder::Options().prefetch(2).validate());
  batchcorder::Reader ahead_reader = ahead.reader();
  CHECK(drain(ahead_reader) == 5, "a prefetching cache reads every batch");

  ArrowArrayStream up = make_producer(5, 10, -1, 0, nullptr);
  batchcorder::Cache cache(&up, batchcorder::Options().max_readers(2).validate());

  // ingest_next pulls one batch at a time, then reports the end.
  int pulled = 0;
  while (cache.ingest_next()) pulled++;
  CHECK(pulled == 5 && cache.upstream_exhausted(), "ingest_next pulls every batch, then false");

  // Casts: an existing reader, failing or nulling values that do not convert.
  Requested requested;
  batchcorder::Reader cast = cache.reader();
  cast.cast(&requested.top);
  CHECK(std::strcmp(cast.schema()->children[0]->format, "i") == 0, "cast() changes the schema");
  CHECK(drain(cast) == 5, "a cast reader reads every batch");
  batchcorder::Reader nulls = cache.reader();
  nulls.cast(&requested.top, BC_CAST_FAILURE_NULL);
  CHECK(drain(nulls) == 5, "cast(schema, BC_CAST_FAILURE_NULL)");

  // The reader cap: the status stays BC_INVALID_ARGUMENT, the kind says which.
  Failure cap = failure_of([&] { cache.reader(); });
  CHECK(cap.status == BC_INVALID_ARGUMENT && cap.kind == BC_ERROR_KIND_READER_CAP, "the reader cap has its kind");
  try {
    cache.reader();
    CHECK(false, "the cap holds");
  } catch (const batchcorder::Error &err) {
    CHECK(std::strstr(err.what(), "BC_ERROR_KIND_READER_CAP") != nullptr, "named in the message");
  }
  CHECK(failure_of([] { batchcorder::Options().max_readers(0); }).kind == BC_ERROR_KIND_NONE,
        "a bad max_readers is not the cap");

  // A view reads through its reader: one position for both.
  ArrowArrayStream up2 = make_producer(3, 10, -1, 0, nullptr);
  batchcorder::Cache plain(&up2);
  batchcorder::Reader reader = plain.reader();
  {
    batchcorder::Stream view = reader.view();
    ArrowArray batch;
    CHECK(view->get_next(view.get(), &batch) == 0 && batch.release != nullptr,
          "a view reads a batch");
    batch.release(&batch);
  }  // released before the reader, as it must be
  CHECK(reader.position() == 1 && drain(reader) == 2, "the reader moved with its view");
}

// Random access: a batch by its index, rows by theirs, out of range with its kind.
static void test_random_access() {
  ArrowArrayStream up = make_producer(4, 10, -1, 0, nullptr);
  batchcorder::Cache cache(&up);
  batchcorder::Array batch = cache.batch(2);
  const ArrowArray *ids = batch->children[0];
  CHECK(batch->length == 10 && static_cast<const int64_t *>(ids->buffers[1])[ids->offset] == 20,
        "batch(2) holds rows 20 to 29");
  CHECK(cache.ingested_count() == 3, "batch(2) pulled up to batch 2");
  batchcorder::Array rows = cache.take({39, 0, 39});
  const ArrowArray *taken = rows->children[0];
  const int64_t *values = static_cast<const int64_t *>(taken->buffers[1]) + taken->offset;
  CHECK(rows->length == 3 && values[0] == 39 && values[1] == 0 && values[2] == 39,
        "take() gives the rows in order");
  Failure past = failure_of([&] { cache.batch(4); });
  CHECK(past.status == BC_INVALID_ARGUMENT && past.kind == BC_ERROR_KIND_OUT_OF_RANGE,
        "batch() past the end has its kind");
  CHECK(failure_of([&] { cache.take({40}); }).kind == BC_ERROR_KIND_OUT_OF_RANGE,
        "take() past the end too");
}

static void test_reader_options() {
  struct ArrowArrayStream up = make_producer(9, 10, -1, EINVAL, nullptr);
  batchcorder::Cache cache(&up, batchcorder::Options().max_readers(3));
  CHECK(status_of([] { batchcorder::ReaderOptions().shard(2, 2); }) == BC_INVALID_ARGUMENT,
        "a shard index out of range throws");
  CHECK(status_of([] { batchcorder::ReaderOptions().shuffle_window(0); }) == BC_INVALID_ARGUMENT,
        "a window of 0 throws");
  CHECK(status_of([&] { cache.reader(batchcorder::ReaderOptions().from_start(false).shuffle(1)); }) ==
            BC_INVALID_ARGUMENT,
        "a shuffle from the frontier throws");
  int total = 0;
  for (std::uint64_t index = 0; index < 3; index++) {
    batchcorder::ReaderOptions options;
    options.shuffle(7).shuffle_window(3).shuffle_rows(true).shard(index, 3);
    batchcorder::Reader shard = cache.reader(options);
    total += drain(shard);
  }
  CHECK(total == 9, "three shards cover the nine batches once");
  CHECK(failure_of([&] { cache.reader(batchcorder::ReaderOptions()); }).kind == BC_ERROR_KIND_READER_CAP,
        "shard readers count toward max_readers");
  CHECK(status_of([&] { cache.check_reader_options(batchcorder::ReaderOptions().from_start(false).shuffle(1)); }) ==
            BC_INVALID_ARGUMENT,
        "check_reader_options throws what reader() would");
  CHECK(status_of([&] { cache.check_reader_options(batchcorder::ReaderOptions().shuffle(1).shard(0, 2)); }) == BC_OK,
        "check_reader_options makes no reader: it passes with max_readers reached");
}

// Persist and open: the saved stream replays from the opened cache; a directory that is
// not a save throws BC_CORRUPT, named by status_name.
static void test_persist_and_open() {
  char dir[260];
  CHECK(make_temp_dir("bc-cpp-persist-", dir, sizeof dir) == 0, "temp dir");
  std::string path = std::string(dir) + SEP "saved";
  std::string streamed = std::string(dir) + SEP "streamed";
  {  // The caches end before their saves are removed: Windows keeps an open file's name.
    ArrowArrayStream source = make_producer(4, 10, -1, 0, nullptr);
    batchcorder::Cache saving(&source);
    BcPersisted saved = saving.persist(path);
    CHECK(saved.batches == 4 && saved.rows == 40, "persist() returns the manifest's counts");
    batchcorder::Cache opened = batchcorder::Cache::open(path);
    batchcorder::Reader replay = opened.reader();
    CHECK(drain(replay) == 4, "an opened cache replays every batch");
    batchcorder::Cache::Shared shared = opened.share();
    CHECK(shared.path == path && std::strcmp(shared.info.id, saved.id) == 0, "share() names the save");
    batchcorder::Cache capped = batchcorder::Cache::open(path, batchcorder::Options().max_readers(1),
                                                         BC_VERIFY_ALWAYS);
    batchcorder::Reader only = capped.reader();
    CHECK(drain(only) == 4, "open() with options replays, verifying every batch");
    CHECK(failure_of([&] { capped.reader(); }).kind == BC_ERROR_KIND_READER_CAP, "and keeps its max_readers");
    CHECK(status_of([&] { batchcorder::Cache::open(path, batchcorder::Options().prefetch(1)); }) ==
              BC_INVALID_ARGUMENT,
          "open() refuses an option it cannot use");
    ArrowArrayStream memory_only = make_producer(1, 10, -1, 0, nullptr);
    batchcorder::Cache unsaved(&memory_only);
    CHECK(status_of([&] { unsaved.share(); }) == BC_INVALID_ARGUMENT, "a memory-only cache has nothing to share");

    // persist as an option: the save appears once the upstream ends.
    ArrowArrayStream source2 = make_producer(2, 10, -1, 0, nullptr);
    {
      batchcorder::Cache saving2(&source2, batchcorder::Options().persist(streamed));
      CHECK(saving2.ingest_all() == 2 && saving2.share().path == streamed, "Options::persist saves while ingesting");
    }
    batchcorder::Cache reopened = batchcorder::Cache::open(streamed);
    batchcorder::Reader streamed_reader = reopened.reader();
    CHECK(drain(streamed_reader) == 2, "and the save opens");
    try {
      batchcorder::Cache::open(dir);
      CHECK(false, "opening a directory that is not a save throws");
    } catch (const batchcorder::Error &err) {
      CHECK(err.status() == BC_CORRUPT, "with BC_CORRUPT");
      CHECK(std::strstr(err.what(), "BC_CORRUPT") != nullptr, "named in the message");
    }
  }
  for (const std::string &save : {path, streamed}) {
    for (const char *name : {"manifest.json", "checksums.xxh3", "data.arrow"}) {
      std::remove((save + SEP + name).c_str());
    }
    rmdir(save.c_str());
  }
  CHECK(rmdir(dir) == 0, "only the saves were left");
}

int main() {
  batchcorder::Reader empty;
  ArrowArrayStream zeroed;
  std::memset(&zeroed, 0, sizeof zeroed);
  CHECK(std::memcmp(empty.get(), &zeroed, sizeof zeroed) == 0, "an empty Reader is all zeros");
  CHECK(status_of([&] { empty.schema(); }) == BC_INVALID_ARGUMENT, "schema() of an empty Reader throws");
  batchcorder::Array array;
  CHECK(array.get()->n_children == 0 && array.get()->children == nullptr, "an empty Array is zeroed");

  ArrowArrayStream up = make_producer(3, 10, -1, 0, nullptr);
  batchcorder::Cache cache(&up);
  batchcorder::Reader reader = cache.reader();
  CHECK(reader.schema()->n_children == 2, "schema() of a live reader");
  ArrowArrayStream handed = reader.release();
  CHECK(!reader.valid() && reader.get()->get_next == nullptr, "release() leaves a zeroed Reader");
  batchcorder::Reader again(&handed);
  int batches = 0;
  while (again.next()) batches++;
  CHECK(batches == 3, "a handed-back reader reads every batch");

  // get_schema fails once the cache is closed: schema() reports the reader's own status,
  // which only the library knows (the callback returns an errno).
  cache.close();
  CHECK(status_of([&] { again.schema(); }) == BC_CLOSED, "schema() of a closed cache's reader is BC_CLOSED");
  batchcorder::Reader late(&handed);  // handed is released: an empty reader
  CHECK(!late.valid(), "taking over a released stream gives an empty reader");
  CHECK(status_of([&] { cache.reader(); }) == BC_CLOSED, "a closed cache refuses readers with BC_CLOSED");


  test_persist_and_open();
  test_options_casts_and_views();
  test_random_access();
  test_reader_options();
  return summary("cpp wrapper");
}
