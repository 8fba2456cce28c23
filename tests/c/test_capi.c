/* Every function of libbatchcorder's C contract, including misuse, as a C program sees it,
 * on Linux and (built by mingw-w64, run by wine) on Windows. Prints a line per failed
 * check and ends with "test_capi: N passed, M failed" (on Windows, with the Unix-only count). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batchcorder.h"
#include "check.h"
#include "portable.h"
#include "producer.h"

static const int64_t ROWS = 100;

/* strstr that treats a NULL message as a failed match. */
static int contains(const char *text, const char *needle) {
  return text != NULL && strstr(text, needle) != NULL;
}

static BcCache *new_cache(int64_t batches, int64_t fail_at, BcOptions *opts, int64_t *pulls) {
  struct ArrowArrayStream up = make_producer(batches, ROWS, fail_at, EINVAL, pulls);
  BcCache *cache = NULL;
  if (bc_cache_new(&up, opts, &cache) != BC_OK) {
    up.release(&up);
    return NULL;
  }
  return cache;
}

static int64_t first_id(const struct ArrowArray *batch) {
  return ((const int64_t *)batch->children[0]->buffers[1])[batch->children[0]->offset];
}

/* Sum of the id column over a whole reader; -1 on error. Releases the reader. */
static int64_t drain(struct ArrowArrayStream *reader, int64_t *batches) {
  int64_t sum = 0, n = 0;
  struct ArrowArray batch;
  for (;;) {
    if (reader->get_next(reader, &batch) != 0) {
      reader->release(reader);
      return -1;
    }
    if (batch.release == NULL) break;
    const int64_t *ids = (const int64_t *)batch.children[0]->buffers[1];
    for (int64_t i = 0; i < batch.length; i++) sum += ids[i];
    batch.release(&batch);
    n++;
  }
  reader->release(reader);
  if (batches) *batches = n;
  return sum;
}

static int64_t expected_sum(int64_t batches) {
  int64_t n = batches * ROWS;
  return n * (n - 1) / 2;
}

static void test_version_and_errors(void) {
  int major, minor, patch;
  CHECK(sscanf(bc_version(), "%d.%d.%d", &major, &minor, &patch) == 3, "bc_version format");
  CHECK(major == BATCHCORDER_VERSION_MAJOR && minor == BATCHCORDER_VERSION_MINOR &&
            patch == BATCHCORDER_VERSION_PATCH,
        "version macros match bc_version");
  CHECK(bc_last_error() != NULL, "bc_last_error never NULL");
  CHECK(bc_last_error_kind() == BC_ERROR_KIND_NONE, "no kind before any failure");
}

static void test_new_and_misuse(void) {
  BcCache *cache = NULL;
  struct ArrowArrayStream up = make_producer(3, ROWS, -1, 0, NULL);
  CHECK(bc_cache_new(NULL, NULL, &cache) == BC_INVALID_ARGUMENT, "NULL upstream");
  CHECK(contains(bc_last_error(), "upstream"), "message names upstream");
  CHECK(bc_cache_new(&up, NULL, NULL) == BC_INVALID_ARGUMENT, "NULL out");
  CHECK(contains(bc_last_error(), "out"), "message names out");
  CHECK(up.release != NULL, "caller still owns the stream after a failure");

  struct ArrowArrayStream released = up;
  released.release = NULL;
  CHECK(bc_cache_new(&released, NULL, &cache) == BC_INVALID_ARGUMENT, "released stream");
  CHECK(contains(bc_last_error(), "released"), "message says released");

  ((Producer *)up.private_data)->fail_schema = 1;
  CHECK(bc_cache_new(&up, NULL, &cache) == BC_UPSTREAM, "failing get_schema is BC_UPSTREAM");
  CHECK(up.release != NULL && cache == NULL, "failure leaves stream and out untouched");
  ((Producer *)up.private_data)->fail_schema = 0;

  CHECK(bc_cache_new(&up, NULL, &cache) == BC_OK, "bc_cache_new");
  CHECK(up.release == NULL, "the cache moved the upstream");
  CHECK(bc_cache_ingested_count(cache) == 0, "nothing read yet: lazy");

  struct ArrowArrayStream reader;
  struct ArrowArray array;
  uint64_t position = 0;
  CHECK(bc_cache_reader(NULL, true, NULL, &reader) == BC_INVALID_ARGUMENT, "reader NULL cache");
  CHECK(bc_cache_reader(cache, true, NULL, NULL) == BC_INVALID_ARGUMENT, "reader NULL out");
  CHECK(bc_cache_schema(cache, NULL) == BC_INVALID_ARGUMENT, "schema NULL out");
  CHECK(bc_cache_stats(cache, NULL) == BC_INVALID_ARGUMENT, "stats NULL out");
  CHECK(bc_cache_check_schema(cache, NULL) == BC_INVALID_ARGUMENT, "check_schema NULL");
  CHECK(bc_reader_next(NULL, &array) == BC_INVALID_ARGUMENT, "reader_next NULL");
  CHECK(bc_reader_position(NULL, &position) == BC_INVALID_ARGUMENT, "reader_position NULL");
  struct ArrowArrayStream foreign = make_producer(1, 1, -1, 0, NULL);
  CHECK(bc_reader_next(&foreign, &array) == BC_INVALID_ARGUMENT, "foreign stream refused");
  foreign.release(&foreign);
  CHECK(bc_cache_close(NULL) == BC_INVALID_ARGUMENT, "close NULL");
  CHECK(bc_cache_ingested_count(NULL) == 0 && !bc_cache_upstream_exhausted(NULL), "NULL getters");
  bc_cache_free(NULL);
  bc_options_free(NULL);
  bc_stream_free(NULL);
  bc_cache_free(cache);
}

static void test_options(void) {
  BcOptions *opts = bc_options_new();
  CHECK(opts != NULL, "bc_options_new");
  CHECK(bc_options_set_memory_capacity(opts, 0) == BC_OK, "memory_capacity 0 is an option");
  CHECK(bc_options_validate(opts) == BC_INVALID_ARGUMENT && contains(bc_last_error(), "memory_capacity"),
        "bc_options_validate refuses it without disk, before any stream is handed over");
  CHECK(bc_options_validate(NULL) == BC_INVALID_ARGUMENT, "bc_options_validate of NULL");
  struct ArrowArrayStream up = make_producer(1, ROWS, -1, 0, NULL);
  BcCache *cache = NULL;
  CHECK(bc_cache_new(&up, opts, &cache) == BC_INVALID_ARGUMENT, "... refused without disk");
  CHECK(contains(bc_last_error(), "memory_capacity"), "message names memory_capacity");
  CHECK(up.release != NULL && cache == NULL, "the caller keeps the stream");
  up.release(&up);
  CHECK(bc_options_set_max_readers(opts, 0) == BC_INVALID_ARGUMENT, "max_readers 0");
  CHECK(contains(bc_last_error(), "max_readers"), "message names max_readers");
  CHECK(bc_options_set_max_readers(NULL, 2) == BC_INVALID_ARGUMENT, "NULL opts");
  CHECK(bc_options_set_write_policy(opts, 7) == BC_INVALID_ARGUMENT, "bad write policy");
  CHECK(bc_options_set_compression(opts, 9) == BC_INVALID_ARGUMENT, "bad compression");
  CHECK(bc_options_set_segment_bytes(opts, 10) == BC_INVALID_ARGUMENT, "tiny segment");
  CHECK(bc_options_set_disk(opts, NULL, 10) == BC_INVALID_ARGUMENT, "NULL disk dir");
  CHECK(bc_options_set_disk(opts, "/tmp", 0) == BC_INVALID_ARGUMENT, "zero disk capacity");
  CHECK(bc_options_set_write_policy(opts, BC_WRITE_ON_EVICTION) == BC_OK, "write policy");
  CHECK(bc_options_set_disk(opts, "/tmp", 1 << 20) == BC_OK && bc_options_validate(opts) == BC_OK,
        "memory_capacity 0 with the disk tier is valid");
  bc_options_free(opts);
}

static void test_replay_exactly_once(void) {
  int64_t pulls = 0;
  BcCache *cache = new_cache(10, -1, NULL, &pulls);
  CHECK(cache != NULL, "cache");
  struct ArrowArrayStream a, b, late;
  CHECK(bc_cache_reader(cache, true, NULL, &a) == BC_OK, "reader a");
  struct ArrowArray batch;
  for (int i = 0; i < 2; i++) {
    CHECK(a.get_next(&a, &batch) == 0 && first_id(&batch) == i * ROWS, "a reads in order");
    batch.release(&batch);
  }
  CHECK(bc_cache_ingested_count(cache) == 2 && pulls == 2, "pulled only what was read");
  CHECK(bc_cache_reader(cache, false, NULL, &late) == BC_OK, "frontier reader");
  CHECK(late.get_next(&late, &batch) == 0 && first_id(&batch) == 2 * ROWS,
        "from_start=false starts at the frontier");
  batch.release(&batch);
  late.release(&late);
  CHECK(bc_cache_reader(cache, true, NULL, &b) == BC_OK, "reader b");
  int64_t n = 0;
  CHECK(drain(&b, &n) == expected_sum(10) && n == 10, "b replays everything");
  CHECK(drain(&a, NULL) == expected_sum(10) - (0 + 99) * 100 / 2 - (100 + 199) * 100 / 2,
        "a continues where it was");
  uint64_t total = 0;
  CHECK(bc_cache_ingest_all(cache, &total) == BC_OK && total == 10, "ingest_all count");
  CHECK(bc_cache_ingest_all(cache, NULL) == BC_OK, "ingest_all idempotent, NULL out");
  CHECK(bc_cache_upstream_exhausted(cache), "exhausted");
  CHECK(pulls == 11, "upstream pulled exactly once per batch plus its end");

  struct ArrowSchema schema;
  CHECK(bc_cache_schema(cache, &schema) == BC_OK, "schema");
  CHECK(strcmp(schema.format, "+s") == 0 && schema.n_children == 2 &&
            strcmp(schema.children[0]->name, "id") == 0 &&
            strcmp(schema.children[1]->name, "x") == 0,
        "schema fields");
  schema.release(&schema);

  BcStats stats;
  CHECK(bc_cache_stats(cache, &stats) == BC_OK, "stats");
  CHECK(stats.batches_ingested == 10 && stats.rows_ingested == (uint64_t)(10 * ROWS) &&
            stats.memory_bytes >= (uint64_t)(10 * ROWS * 16) && stats.readers_created == 3 &&
            stats.readers_live == 0 && stats.upstream_exhausted,
        "stats fields");
  bc_cache_free(cache);
}

static void fill_requested(struct ArrowSchema *top, struct ArrowSchema *kids[2],
                           const char *id_format, const char *id_name) {
  memset(top, 0, sizeof *top);
  top->format = "+s";
  top->n_children = 2;
  top->children = kids;
  fill_child_schema(kids[0], id_format, id_name);
  fill_child_schema(kids[1], "g", "x");
  kids[0]->release = kids[1]->release = NULL; /* owned by this test, never released */
  top->release = NULL;
}

static void test_requested_schema(void) {
  BcCache *cache = new_cache(3, -1, NULL, NULL);
  struct ArrowSchema top, id, x, *kids[2] = {&id, &x};
  struct ArrowArrayStream reader;
  fill_requested(&top, kids, "i", "id");
  CHECK(bc_cache_check_schema(cache, &top) == BC_OK, "int64 -> int32 is castable");
  CHECK(bc_cache_reader(cache, true, &top, &reader) == BC_OK, "casting reader");
  struct ArrowSchema got;
  CHECK(reader.get_schema(&reader, &got) == 0 && strcmp(got.children[0]->format, "i") == 0,
        "reader schema is the requested one");
  got.release(&got);
  struct ArrowArray batch;
  CHECK(reader.get_next(&reader, &batch) == 0 && ((const int32_t *)batch.children[0]->buffers[1])[5] == 5,
        "batches are cast");
  batch.release(&batch);
  reader.release(&reader);

  CHECK(bc_cache_reader(cache, true, NULL, &reader) == BC_OK, "plain reader");
  CHECK(bc_reader_cast(&reader, &top) == BC_OK, "cast an existing reader");
  CHECK(reader.get_schema(&reader, &got) == 0 && strcmp(got.children[0]->format, "i") == 0,
        "the reader now reports the requested schema");
  got.release(&got);
  CHECK(reader.get_next(&reader, &batch) == 0 &&
            ((const int32_t *)batch.children[0]->buffers[1])[7] == 7,
        "later batches are cast");
  batch.release(&batch);
  reader.release(&reader);

  /* int8 holds ids up to 127: batch 1 (ids 100..199) holds values that do not convert. */
  fill_requested(&top, kids, "c", "id");
  CHECK(bc_cache_reader(cache, true, &top, &reader) == BC_OK, "int64 -> int8 reader");
  CHECK(bc_reader_next(&reader, &batch) == BC_OK && batch.children[0]->null_count == 0,
        "batch 0 fits int8");
  batch.release(&batch);
  uint64_t position = 0;
  for (int i = 0; i < 2; i++) {
    CHECK(bc_reader_next(&reader, &batch) == BC_INVALID_ARGUMENT &&
              contains(bc_last_error(), "128") && contains(bc_last_error(), "\"id\""),
          "a value that does not convert fails its batch, naming the field and the value");
    CHECK(bc_reader_position(&reader, &position) == BC_OK && position == 1,
          "the failed batch is not passed");
  }
  CHECK(reader.get_next(&reader, &batch) == EINVAL && contains(reader.get_last_error(&reader), "128"),
        "get_next fails the same way");
  reader.release(&reader);
  CHECK(bc_cache_reader(cache, true, NULL, &reader) == BC_OK, "plain reader");
  CHECK(bc_reader_cast_with(&reader, &top, 7) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "on_failure"),
        "an unknown on_failure is refused, named");
  kids[0]->flags = 2; /* ARROW_FLAG_NULLABLE: the nulls need a nullable field */
  CHECK(bc_reader_cast_with(&reader, &top, BC_CAST_FAILURE_NULL) == BC_OK, "null on failure");
  CHECK(bc_reader_next(&reader, &batch) == BC_OK, "batch 0");
  batch.release(&batch);
  CHECK(bc_reader_next(&reader, &batch) == BC_OK && batch.children[0]->null_count == 72 &&
            ((const int8_t *)batch.children[0]->buffers[1])[27] == 127,
        "values that do not convert become nulls, the rest stay");
  batch.release(&batch);
  reader.release(&reader);

  fill_requested(&top, kids, "l", "nope");
  CHECK(bc_cache_reader(cache, true, &top, &reader) == BC_INVALID_ARGUMENT, "wrong name");
  CHECK(contains(bc_last_error(), "nope"), "message names the field");
  top.n_children = 1;
  CHECK(bc_cache_reader(cache, true, &top, &reader) == BC_INVALID_ARGUMENT, "wrong count");
  bc_cache_free(cache);
}

static void test_max_readers_and_capacity(void) {
  BcOptions *opts = bc_options_new();
  bc_options_set_max_readers(opts, 2);
  BcCache *cache = new_cache(10, -1, opts, NULL);
  struct ArrowArrayStream a, b, c;
  CHECK(bc_cache_reader(cache, true, NULL, &a) == BC_OK, "first reader");
  CHECK(bc_cache_reader(cache, true, NULL, &b) == BC_OK, "second reader");
  CHECK(bc_cache_reader(cache, true, NULL, &c) == BC_INVALID_ARGUMENT, "cap reached");
  CHECK(bc_last_error_kind() == BC_ERROR_KIND_READER_CAP, "its kind is the reader cap");
  CHECK(contains(bc_last_error(), "max_readers"), "message names max_readers");
  CHECK(bc_options_set_max_readers(opts, 0) == BC_INVALID_ARGUMENT &&
            bc_last_error_kind() == BC_ERROR_KIND_NONE,
        "a bad max_readers is not the cap");
  struct ArrowArray batch;
  for (int i = 0; i < 4; i++) {
    a.get_next(&a, &batch);
    batch.release(&batch);
    b.get_next(&b, &batch);
    batch.release(&batch);
  }
  BcStats stats;
  bc_cache_stats(cache, &stats);
  CHECK(stats.batches_evicted == 4, "batches both passed are evicted");
  a.release(&a);
  b.release(&b);
  bc_cache_free(cache);

  bc_options_free(opts);
  opts = bc_options_new();
  bc_options_set_memory_capacity(opts, 4000); /* two 1600-byte batches fit */
  cache = new_cache(10, -1, opts, NULL);
  bc_options_free(opts);
  CHECK(bc_cache_reader(cache, true, NULL, &a) == BC_OK, "reader");
  a.get_next(&a, &batch);
  batch.release(&batch);
  a.get_next(&a, &batch);
  batch.release(&batch);
  CHECK(a.get_next(&a, &batch) == ENOMEM, "over the memory budget is ENOMEM");
  CHECK(contains(a.get_last_error(&a), "memory_capacity"), "message names memory_capacity");
  CHECK(bc_reader_next(&a, &batch) == BC_CAPACITY, "bc_reader_next says BC_CAPACITY");
  a.release(&a);
  CHECK(bc_cache_reader(cache, true, NULL, &b) == BC_OK, "new reader after the failure");
  CHECK(b.get_next(&b, &batch) == 0 && first_id(&batch) == 0, "earlier batches stay readable");
  batch.release(&batch);
  b.release(&b);
  bc_cache_free(cache);
}

/* The first ids of a reader's batches, in its order, into `ids` (at most `max`); the
 * count, or -1 on error. Releases the reader. */
static int64_t order_of(struct ArrowArrayStream *reader, int64_t *ids, int64_t max) {
  int64_t n = 0;
  struct ArrowArray batch;
  while (reader->get_next(reader, &batch) == 0 && batch.release != NULL) {
    if (n < max) ids[n] = first_id(&batch) / ROWS;
    n++;
    batch.release(&batch);
  }
  reader->release(reader);
  return n;
}

static void test_reader_options(void) {
  BcCache *cache = new_cache(12, -1, NULL, NULL);
  BcReaderOptions *opts = bc_reader_options_new();
  struct ArrowArrayStream r;
  int64_t whole[12], again[12], shard[12];

  /* Misuse: each setter names its argument, and a refused value changes nothing. */
  CHECK(bc_reader_options_set_shard(opts, 3, 3) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "`index`"),
        "a shard index out of range names `index`");
  CHECK(bc_reader_options_set_shard(opts, 0, 0) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "`count`"),
        "a shard count of 0 names `count`");
  CHECK(bc_reader_options_set_shuffle_window(opts, 0) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "`window`"),
        "a window of 0 names `window`");
  CHECK(bc_reader_options_set_shuffle(NULL, 1) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "opts"),
        "NULL opts is named");
  CHECK(bc_reader_options_set_shuffle_rows(opts, true) == BC_OK, "shuffle_rows is set");
  CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "shuffle_rows"),
        "shuffle_rows without a seed is refused naming it");
  bc_reader_options_set_shuffle_rows(opts, false);
  bc_reader_options_set_shuffle(opts, 5);
  bc_reader_options_set_from_start(opts, false);
  CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "from_start"),
        "a shuffle from the frontier is refused naming from_start");
  bc_reader_options_set_from_start(opts, true);

  /* A seed gives one order; its shards split it. */
  CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_OK, "a shuffled reader");
  CHECK(order_of(&r, whole, 12) == 12, "it returns every batch");
  bc_cache_reader_with(cache, opts, NULL, &r);
  order_of(&r, again, 12);
  CHECK(memcmp(whole, again, sizeof whole) == 0, "the same seed gives the same order");
  int moved = 0;
  for (int i = 0; i < 12; i++) moved += whole[i] != i;
  CHECK(moved > 0, "the order is not the stream's");
  bc_reader_options_set_shard(opts, 1, 3);
  CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_OK, "a shuffled shard");
  struct ArrowArray batch;
  r.get_next(&r, &batch);
  batch.release(&batch);
  uint64_t position = 0;
  CHECK(bc_reader_position(&r, &position) == BC_OK && position == 1,
        "the position of a shard counts the batches returned");
  int64_t rest = order_of(&r, shard + 1, 11) + 1;
  int same = rest == 4;
  for (int i = 1; i < 4 && same; i++) same = shard[i] == whole[1 + 3 * i];
  CHECK(same, "shard 1 of 3 takes elements 1, 4, 7, 10 of the shuffled order");

  /* A window on a live stream pulls one window before the first batch. */
  BcCache *live = new_cache(50, -1, NULL, NULL);
  bc_reader_options_set_shard(opts, 0, 1);
  bc_reader_options_set_shuffle_window(opts, 4);
  bc_reader_options_set_shuffle_rows(opts, true);
  CHECK(bc_cache_reader_with(live, opts, NULL, &r) == BC_OK, "a windowed reader");
  CHECK(r.get_next(&r, &batch) == 0 && batch.length == ROWS, "its first batch");
  batch.release(&batch);
  BcStats stats;
  bc_cache_stats(live, &stats);
  CHECK(stats.batches_ingested == 4, "one window pulled, not the stream");
  r.release(&r);
  CHECK(bc_cache_reader_with(live, NULL, NULL, &r) == BC_OK && drain(&r, NULL) == expected_sum(50),
        "NULL opts: a reader in order from the start");
  bc_cache_free(live);
  bc_reader_options_free(opts);
  bc_reader_options_free(NULL);
  bc_cache_free(cache);
}

/* bc_cache_check_reader_options refuses what bc_cache_reader_with refuses, with its status
 * and message, and makes no reader. */
static void test_check_reader_options(void) {
  BcOptions *copts = bc_options_new();
  bc_options_set_max_readers(copts, 1);
  bc_options_set_memory_capacity(copts, 4000); /* two 1600-byte batches fit */
  BcCache *cache = new_cache(10, -1, copts, NULL);
  bc_options_free(copts);
  BcReaderOptions *opts = bc_reader_options_new();
  struct ArrowArrayStream held, r;
  char made[512];

  CHECK(bc_cache_check_reader_options(NULL, opts) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "cache"),
        "NULL cache is named");
  CHECK(bc_cache_check_reader_options(cache, NULL) == BC_OK, "NULL opts: a plain reader");
  CHECK(bc_cache_check_reader_options(cache, opts) == BC_OK, "default opts pass");

  /* Each refusal the builder lets through to the reader, against bc_cache_reader_with's. */
  bool pulled = false;
  CHECK(bc_cache_reader(cache, true, NULL, &held) == BC_OK && bc_cache_ingest_next(cache, &pulled) == BC_OK,
        "the one reader max_readers allows, and a batch whose size is known");
  bc_reader_options_set_shuffle_rows(opts, true);
  const char *says[] = {"shuffle_rows", "shuffle_window", "from_start", "shuffle_window=10"};
  for (int i = 0; i < 4; i++) {
    if (i == 1) {
      bc_reader_options_set_shuffle_rows(opts, false);
      bc_reader_options_set_shuffle_window(opts, 2);
    } else if (i == 2) {
      bc_reader_options_set_shuffle(opts, 3);
      bc_reader_options_set_from_start(opts, false);
    } else if (i == 3) {
      bc_reader_options_set_from_start(opts, true);
      bc_reader_options_set_shuffle_window(opts, 10);
    }
    CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_INVALID_ARGUMENT, "the reader is refused");
    snprintf(made, sizeof made, "%s", bc_last_error());
    CHECK(bc_cache_check_reader_options(cache, opts) == BC_INVALID_ARGUMENT &&
              strcmp(bc_last_error(), made) == 0 && contains(made, says[i]),
          "the check refuses it with the same message, naming the option");
  }
  bc_reader_options_set_shuffle_window(opts, 2);
  bc_reader_options_set_shard(opts, 1, 2);
  CHECK(bc_cache_check_reader_options(cache, opts) == BC_OK,
        "a valid order passes with max_readers reached: the check is no reader");
  BcStats stats;
  bc_cache_stats(cache, &stats);
  CHECK(stats.readers_live == 1 && stats.readers_created == 1, "no reader was counted");
  CHECK(bc_cache_reader_with(cache, opts, NULL, &r) == BC_INVALID_ARGUMENT &&
            bc_last_error_kind() == BC_ERROR_KIND_READER_CAP,
        "while the reader itself is refused by max_readers");
  held.release(&held);
  bc_cache_close(cache);
  CHECK(bc_cache_check_reader_options(cache, opts) == BC_CLOSED &&
            bc_cache_check_reader_options(cache, NULL) == BC_CLOSED,
        "a closed cache is BC_CLOSED");
  bc_reader_options_free(opts);
  bc_cache_free(cache);
}

static void test_upstream_failure(void) {
  int64_t pulls = 0;
  BcCache *cache = new_cache(10, 3, NULL, &pulls);
  for (int round = 0; round < 2; round++) {
    struct ArrowArrayStream reader;
    struct ArrowArray batch;
    CHECK(bc_cache_reader(cache, true, NULL, &reader) == BC_OK, "reader");
    for (int i = 0; i < 3; i++) {
      CHECK(reader.get_next(&reader, &batch) == 0 && first_id(&batch) == i * ROWS,
            "batches before the failure");
      batch.release(&batch);
    }
    CHECK(reader.get_next(&reader, &batch) == EINVAL, "the upstream's errno");
    CHECK(contains(reader.get_last_error(&reader), "producer broke on purpose"),
          "the upstream's message");
    CHECK(bc_reader_next(&reader, &batch) == BC_UPSTREAM && bc_last_error_errno() == EINVAL,
          "BC_UPSTREAM with the upstream errno");
    reader.release(&reader);
  }
  CHECK(pulls == 4, "the failed pull is never retried");
  CHECK(bc_cache_ingest_all(cache, NULL) == BC_UPSTREAM, "ingest_all reports it too");
  bc_cache_free(cache);
}

static void test_malformed_upstream(void) {
  struct ArrowArrayStream up = make_producer(5, ROWS, -1, 0, NULL);
  ((Producer *)up.private_data)->malformed_at = 2;
  BcCache *cache = NULL;
  CHECK(bc_cache_new(&up, NULL, &cache) == BC_OK, "cache over a producer that breaks its schema");
  struct ArrowArrayStream reader;
  struct ArrowArray batch;
  uint64_t position = 0;
  for (int pass = 0; pass < 2; pass++) {
    bc_cache_reader(cache, true, NULL, &reader);
    for (int i = 0; i < 2; i++) {
      CHECK(bc_reader_next(&reader, &batch) == BC_OK && first_id(&batch) == i * ROWS,
            "the batches before the malformed one are readable");
      batch.release(&batch);
    }
    CHECK(bc_reader_next(&reader, &batch) == BC_UPSTREAM, "a malformed batch is the upstream's error");
    CHECK(contains(bc_last_error(), "malformed") && contains(bc_last_error(), "1 children") &&
              contains(bc_last_error(), "has 2"),
          "the message says what is wrong");
    CHECK(bc_reader_position(&reader, &position) == BC_OK && position == 2, "at the malformed batch");
    reader.release(&reader);
  }
  BcStats stats;
  CHECK(bc_cache_stats(cache, &stats) == BC_OK && stats.batches_ingested == 2,
        "the cache is not poisoned, and kept the two batches");
  bc_cache_free(cache);
}

static void test_lifetimes_and_close(void) {
  BcCache *cache = new_cache(5, -1, NULL, NULL);
  struct ArrowArrayStream reader, survivor;
  struct ArrowArray kept;
  bc_cache_reader(cache, true, NULL, &reader);
  bc_cache_reader(cache, true, NULL, &survivor);
  CHECK(reader.get_next(&reader, &kept) == 0, "a batch to keep");
  reader.release(&reader);
  uint64_t position = 9;
  CHECK(bc_reader_position(&survivor, &position) == BC_OK && position == 0, "position");
  bc_cache_free(cache); /* readers outlive the handle */
  int64_t n = 0;
  CHECK(drain(&survivor, &n) == expected_sum(5) && n == 5, "reader outlives bc_cache_free");
  CHECK(first_id(&kept) == 0 && kept.children[1]->length == ROWS, "array outlives everything");
  kept.release(&kept);

  cache = new_cache(5, -1, NULL, NULL);
  bc_cache_reader(cache, true, NULL, &reader);
  CHECK(bc_cache_close(cache) == BC_OK, "close");
  CHECK(bc_cache_close(cache) == BC_OK, "close is idempotent");
  struct ArrowArray batch;
  CHECK(reader.get_next(&reader, &batch) != 0, "reader after close fails");
  CHECK(contains(reader.get_last_error(&reader), "closed"), "message says closed");
  struct ArrowSchema no_schema;
  CHECK(reader.get_schema(&reader, &no_schema) == EINVAL && bc_reader_failure(&reader) == BC_CLOSED,
        "get_schema after close fails too, typed BC_CLOSED");
  CHECK(bc_reader_next(&reader, &batch) == BC_CLOSED, "BC_CLOSED");
  reader.release(&reader);
  CHECK(bc_cache_reader(cache, true, NULL, &reader) == BC_CLOSED, "no new reader after close");
  bc_cache_free(cache);

  struct ArrowArrayStream *heap = bc_stream_new();
  CHECK(heap != NULL && heap->release == NULL, "bc_stream_new is released");
  bc_stream_free(heap);
  cache = new_cache(2, -1, NULL, NULL);
  heap = bc_stream_new();
  CHECK(bc_cache_reader(cache, true, NULL, heap) == BC_OK, "reader into a heap stream");
  bc_stream_free(heap); /* releases the live reader, then frees */
  bc_cache_free(cache);
}

static void test_reader_view(void) {
  BcCache *cache = new_cache(10, 4, NULL, NULL);
  struct ArrowArrayStream reader, view, untouched;
  struct ArrowArray batch;
  struct ArrowSchema schema;
  uint64_t position = 9;
  bc_cache_reader(cache, true, NULL, &reader);
  CHECK(bc_reader_view(NULL, &view) == BC_INVALID_ARGUMENT, "view of NULL");
  CHECK(bc_reader_view(&reader, NULL) == BC_INVALID_ARGUMENT, "view into NULL");
  struct ArrowArrayStream foreign = make_producer(1, 1, -1, 0, NULL);
  untouched = foreign;
  CHECK(bc_reader_view(&foreign, &view) == BC_INVALID_ARGUMENT, "view of a foreign stream");
  CHECK(memcmp(&foreign, &untouched, sizeof foreign) == 0, "a refused view changes nothing");
  foreign.release(&foreign);

  CHECK(bc_reader_view(&reader, &view) == BC_OK, "view");
  CHECK(view.get_schema(&view, &schema) == 0 && schema.n_children == 2, "schema through the view");
  schema.release(&schema);
  CHECK(bc_reader_failure(&reader) == BC_OK, "no failure before any read");
  CHECK(view.get_next(&view, &batch) == 0 && first_id(&batch) == 0, "batch 0 through the view");
  batch.release(&batch);
  CHECK(reader.get_next(&reader, &batch) == 0 && first_id(&batch) == ROWS, "batch 1 through the reader");
  batch.release(&batch);
  CHECK(bc_reader_position(&reader, &position) == BC_OK && position == 2, "one position for both");
  for (int i = 2; i < 4; i++) {
    CHECK(view.get_next(&view, &batch) == 0 && first_id(&batch) == i * ROWS, "later batches");
    batch.release(&batch);
  }
  CHECK(view.get_next(&view, &batch) == EINVAL, "the upstream's errno through the view");
  CHECK(contains(view.get_last_error(&view), "producer broke on purpose"), "its message too");
  CHECK(bc_reader_failure(&reader) == BC_UPSTREAM && bc_last_error_errno() == EINVAL &&
            contains(bc_last_error(), "producer broke on purpose"),
        "bc_reader_failure types the failure read through the view");
  CHECK(bc_reader_failure(NULL) == BC_INVALID_ARGUMENT, "bc_reader_failure of NULL");
  view.release(&view);
  CHECK(view.release == NULL, "the view is released");
  CHECK(bc_reader_next(&reader, &batch) == BC_UPSTREAM, "the reader is live after the view");
  reader.release(&reader);

  /* A consumer may move a stream struct: both the reader and its view keep working. */
  struct ArrowArrayStream moved_reader, moved_view;
  bc_cache_reader(cache, true, NULL, &reader);
  CHECK(bc_reader_view(&reader, &view) == BC_OK, "a second view");
  moved_reader = reader;
  memset(&reader, 0xAB, sizeof reader);
  moved_view = view;
  memset(&view, 0xAB, sizeof view);
  CHECK(moved_view.get_next(&moved_view, &batch) == 0 && first_id(&batch) == 0,
        "a moved view reads through a moved reader");
  batch.release(&batch);
  CHECK(moved_reader.get_next(&moved_reader, &batch) == 0 && first_id(&batch) == ROWS,
        "the moved reader shares the position");
  batch.release(&batch);
  moved_view.release(&moved_view);
  moved_reader.release(&moved_reader);
  bc_cache_free(cache);
}

/* The folder of ours (a name starting with `prefix`) in `dir`, into `out`; 0 if found. */
static int find_folder(const char *dir, const char *prefix, char *out, size_t size) {
  DIR *entries = opendir(dir);
  int found = -1;
  for (struct dirent *entry; entries != NULL && (entry = readdir(entries)) != NULL;) {
    if (strncmp(entry->d_name, prefix, strlen(prefix)) == 0) {
      snprintf(out, size, "%s" SEP "%s", dir, entry->d_name);
      found = 0;
    }
  }
  if (entries != NULL) closedir(entries);
  return found;
}

#ifndef _WIN32
/* Whether `folder` is mode 0700 and every file in it 0600. */
static int private_to_its_user(const char *folder) {
  struct stat st;
  if (stat(folder, &st) != 0 || (st.st_mode & 0777) != 0700) return 0;
  DIR *entries = opendir(folder);
  int files = 0, private_files = 0;
  for (struct dirent *entry; entries != NULL && (entry = readdir(entries)) != NULL;) {
    char file[600];
    snprintf(file, sizeof file, "%s/%s", folder, entry->d_name);
    if (stat(file, &st) == 0 && S_ISREG(st.st_mode)) {
      files++;
      private_files += (st.st_mode & 0777) == 0600;
    }
  }
  if (entries != NULL) closedir(entries);
  return files > 1 && private_files == files;
}
#endif

#ifdef _WIN32
/* The file that stands for `folder`'s lock on Windows (docs/processes.md, "Windows"):
 * <temporary folder>\batchcorder-folder-locks\<volume serial>-<file index>.lock, into
 * `out`. 0 on success. */
static int folder_lock_file(const char *folder, char *out, size_t size) {
  HANDLE handle = CreateFileA(folder, 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                              NULL, OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, NULL);
  if (handle == INVALID_HANDLE_VALUE) return -1;
  BY_HANDLE_FILE_INFORMATION info;
  BOOL ok = GetFileInformationByHandle(handle, &info);
  CloseHandle(handle);
  char temp[MAX_PATH + 1];
  DWORD len = GetTempPathA(sizeof temp, temp);
  if (!ok || len == 0 || len > MAX_PATH) return -1;
  uint64_t index = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
  int n = snprintf(out, size, "%sbatchcorder-folder-locks\\%08" PRIx32 "-%016" PRIx64 ".lock",
                   temp, (uint32_t)info.dwVolumeSerialNumber, index);
  return n > 0 && (size_t)n < size ? 0 : -1;
}
#endif

static void test_disk_tier(void) {
  char dir[260];
  CHECK(make_temp_dir("bc-c-test-", dir, sizeof dir) == 0, "temp dir");
  BcOptions *opts = bc_options_new();
  CHECK(bc_options_set_disk(opts, dir, 1 << 26) == BC_OK, "set disk");
  CHECK(bc_options_set_memory_capacity(opts, 1) == BC_OK, "everything on disk");
  CHECK(bc_options_set_segment_bytes(opts, 8192) == BC_OK, "small segments");
  CHECK(bc_options_set_compression(opts, BC_COMPRESSION_NONE) == BC_OK, "no compression");
  BcCache *cache = new_cache(20, -1, opts, NULL);
  bc_options_free(opts);
  struct ArrowArrayStream a, b;
  bc_cache_reader(cache, true, NULL, &a);
  bc_cache_reader(cache, true, NULL, &b);
  struct ArrowArray kept;
  CHECK(a.get_next(&a, &kept) == 0, "a batch from disk");
  CHECK(drain(&a, NULL) == expected_sum(20) - (0 + 99) * 100 / 2, "replay from disk");
  BcStats stats;
  bc_cache_stats(cache, &stats);
  CHECK(stats.disk_bytes >= (uint64_t)(20 * ROWS * 16) && stats.memory_bytes == 0, "data is on disk");
  char folder[400];
  CHECK(find_folder(dir, "batchcorder-", folder, sizeof folder) == 0, "in a folder of its own");
#ifdef _WIN32
  char lock_file[MAX_PATH + 64];
  CHECK(folder_lock_file(dir, lock_file, sizeof lock_file) == 0, "the parent folder's lock file named");
#endif
  CHECK_UNIX(private_to_its_user(folder), "the folder is mode 0700, its files 0600",
             "Windows has no modes: they inherit the ACL of the folder they are made in");
  CHECK(bc_cache_close(cache) == BC_OK, "close deletes the files");
  CHECK_UNIX(rmdir(dir) == 0, "only the cache's own files were there, and they are gone",
             "Windows keeps a mapped file's name until it is unmapped: checked once the array goes");
  CHECK(first_id(&kept) == 0, "a mapped array stays valid after its file is deleted");
  kept.release(&kept);
#ifdef _WIN32
  CHECK(rmdir(dir) == 0, "once the last array is released, its file and the cache's folder are gone");
  /* Removing one would race another process's open of it (docs/processes.md). */
  CHECK(access(lock_file, F_OK) == 0,
        "the parent folder's lock file is left in place once its cache and the folder are gone");
#endif
  struct ArrowArray batch;
  CHECK(b.get_next(&b, &batch) != 0, "readers fail cleanly after close");
  b.release(&b);
  bc_cache_free(cache);

  char file[300];
  snprintf(file, sizeof file, "%s.file", dir);
  FILE *f = fopen(file, "w");
  CHECK(f != NULL && fclose(f) == 0, "a file beside it");
  opts = bc_options_new();
  CHECK(bc_options_set_disk(opts, file, 1 << 20) == BC_INVALID_ARGUMENT, "a file is not a disk dir");
  bc_options_free(opts);
  CHECK(unlink(file) == 0, "the file removed");
}

/* Remove a save made by the test: its three files, then the directory. */
static void remove_save(const char *path) {
  const char *files[] = {"manifest.json", "checksums.xxh3", "data.arrow"};
  char file[512];
  for (int i = 0; i < 3; i++) {
    snprintf(file, sizeof file, "%s" SEP "%s", path, files[i]);
    unlink(file);
  }
  rmdir(path);
}

static void test_persist_and_open(void) {
  char dir[260];
  CHECK(make_temp_dir("bc-c-persist-", dir, sizeof dir) == 0, "temp dir");
  char path[300], taken[300];
  snprintf(path, sizeof path, "%s" SEP "saved", dir);
  snprintf(taken, sizeof taken, "%s" SEP "taken", dir);

  int64_t pulls = 0;
  BcCache *cache = new_cache(12, -1, NULL, &pulls);
  BcPersisted info;
  memset(&info, 0x5a, sizeof info);
  CHECK(bc_cache_persist(cache, path, &info) == BC_OK, "persist a whole stream");
  CHECK(info.batches == 12 && info.rows == (uint64_t)(12 * ROWS), "counts in the record");
  CHECK(strlen(info.id) == 32, "a 32-digit id");
  CHECK(pulls == 13, "persist reads the upstream once, to its end");
  struct ArrowArrayStream reader;
  bc_cache_reader(cache, true, NULL, &reader);
  CHECK(drain(&reader, NULL) == expected_sum(12), "the cache still replays after a save");

  /* A taken path, NULL arguments: status and message, outputs untouched. */
  CHECK(make_dir(taken) == 0, "a directory that is not empty");
  char marker[400];
  snprintf(marker, sizeof marker, "%s" SEP "keep", taken);
  FILE *f = fopen(marker, "w");
  fputs("theirs", f);
  fclose(f);
  BcPersisted untouched;
  memset(&untouched, 0x5a, sizeof untouched);
  CHECK(bc_cache_persist(cache, taken, &untouched) == BC_INVALID_ARGUMENT, "a taken path");
  CHECK(contains(bc_last_error(), "not empty"), "the message says why");
  CHECK(((unsigned char *)&untouched)[0] == 0x5a, "no output on failure");
  CHECK(access(marker, F_OK) == 0, "nothing of theirs was deleted");
  CHECK(bc_cache_persist(cache, NULL, NULL) == BC_INVALID_ARGUMENT, "NULL path");
  CHECK(contains(bc_last_error(), "path_utf8"), "the message names the argument");
  CHECK(bc_cache_persist(NULL, path, NULL) == BC_INVALID_ARGUMENT, "NULL cache");

  /* Open it twice, read both, close one: the files stay. NULL options: no reader cap. */
  BcCache *first = NULL, *second = NULL;
  BcPersisted opened;
  CHECK(bc_cache_open(path, BC_VERIFY_ALWAYS, NULL, &opened, &first) == BC_OK, "open");
  CHECK(strcmp(opened.id, info.id) == 0, "the same save");
  BcOptions *one_reader = bc_options_new();
  bc_options_set_max_readers(one_reader, 1);
  CHECK(bc_cache_open(path, BC_VERIFY_NEVER, one_reader, NULL, &second) == BC_OK,
        "open again, without verify, with max_readers 1");
  CHECK(bc_cache_upstream_exhausted(first) && bc_cache_ingested_count(first) == 12, "finished");
  int64_t batches = 0;
  bc_cache_reader(first, true, NULL, &reader);
  CHECK(drain(&reader, &batches) == expected_sum(12) && batches == 12, "replay an opened cache");
  bc_cache_reader(second, true, NULL, &reader);
  CHECK(drain(&reader, NULL) == expected_sum(12), "replay the second open");
  CHECK(bc_cache_reader(second, true, NULL, &reader) == BC_INVALID_ARGUMENT &&
            bc_last_error_kind() == BC_ERROR_KIND_READER_CAP,
        "max_readers=1 holds");
  for (int i = 0; i < 4; i++) {
    bc_cache_reader(first, true, NULL, &reader);
    CHECK(drain(&reader, NULL) == expected_sum(12), "without options, no cap");
  }
  struct ArrowSchema schema;
  CHECK(bc_cache_schema(first, &schema) == BC_OK && schema.n_children == 2 &&
            strcmp(schema.children[0]->name, "id") == 0,
        "its schema");
  schema.release(&schema);

  /* share: an opened cache names its directory. */
  char *shared = NULL;
  CHECK(bc_cache_share(first, &shared, NULL) == BC_OK && strcmp(shared, path) == 0, "share");
  bc_string_free(shared);
  CHECK(bc_cache_close(first) == BC_OK, "close an opened cache");
  bc_cache_free(first);
  bc_cache_free(second);
  snprintf(marker, sizeof marker, "%s" SEP "data.arrow", path);
  CHECK(access(marker, F_OK) == 0, "closing deletes none of its files");

  /* A memory-only cache never persisted has nothing to share. */
  BcCache *memory = new_cache(2, -1, NULL, NULL);
  shared = (char *)0x1;
  CHECK(bc_cache_share(memory, &shared, NULL) == BC_INVALID_ARGUMENT, "memory-only: no share");
  CHECK(shared == (char *)0x1, "no output on failure");
  bc_cache_free(memory);

  /* Bad input to open. */
  BcCache *out = (BcCache *)0x1;
  CHECK(bc_cache_open(taken, BC_VERIFY_IF_MODIFIED, NULL, NULL, &out) == BC_CORRUPT, "not a save");
  CHECK(contains(bc_last_error(), "manifest.json"), "the message says what is missing");
  CHECK(out == (BcCache *)0x1, "no output on failure");
  char nowhere[300];
  snprintf(nowhere, sizeof nowhere, "%s" SEP "nowhere", dir);
  CHECK(bc_cache_open(nowhere, BC_VERIFY_IF_MODIFIED, NULL, NULL, &out) == BC_IO, "a missing path");
  CHECK(bc_last_error_errno() == ENOENT, "with ENOENT");
  CHECK(bc_cache_open(NULL, BC_VERIFY_IF_MODIFIED, NULL, NULL, &out) == BC_INVALID_ARGUMENT, "NULL path");
  CHECK(bc_cache_open(path, BC_VERIFY_IF_MODIFIED, NULL, NULL, NULL) == BC_INVALID_ARGUMENT, "NULL out");
  /* Options an opened cache cannot use are refused, naming their setter; the disk tier's
     settings have no effect, as in memory-only mode. */
  bc_options_set_compression(one_reader, BC_COMPRESSION_ZSTD);
  CHECK(bc_cache_open(path, BC_VERIFY_IF_MODIFIED, one_reader, NULL, &second) == BC_OK,
        "a disk-tier setting without the disk tier");
  bc_cache_free(second);
  bc_options_set_memory_capacity(one_reader, 1 << 20);
  CHECK(bc_cache_open(path, BC_VERIFY_IF_MODIFIED, one_reader, NULL, &out) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "bc_options_set_memory_capacity"),
        "memory_capacity is refused, naming its setter");
  CHECK(out == (BcCache *)0x1, "no output on failure");
  bc_options_free(one_reader);

  /* A truncated data file. */
  CHECK(truncate(marker, 100) == 0, "truncate the data file");
  CHECK(bc_cache_open(path, 7, NULL, NULL, &out) == BC_INVALID_ARGUMENT, "an unknown verify");
  CHECK(contains(bc_last_error(), "verify"), "the message names the argument");
  CHECK(bc_cache_open(path, BC_VERIFY_IF_MODIFIED, NULL, NULL, &out) == BC_CORRUPT, "a truncated save");
  CHECK(contains(bc_last_error(), "truncated"), "the message says so");

  bc_cache_free(cache);
  remove_save(path);
  snprintf(marker, sizeof marker, "%s" SEP "keep", taken);
  unlink(marker);
  rmdir(taken);
  CHECK(rmdir(dir) == 0, "no staging folder was left behind");
}

typedef struct {
  BcCache *cache;
  int64_t sum;
} Job;

/* The id at row `i` of a batch whose first column is the producer's int64 ids. */
static int64_t id_at(const struct ArrowArray *batch, int64_t i) {
  const struct ArrowArray *ids = batch->children[0];
  return ((const int64_t *)ids->buffers[1])[ids->offset + i];
}

static void test_random_access(void) {
  int64_t pulls = 0;
  BcCache *cache = new_cache(10, -1, NULL, &pulls);
  struct ArrowArray batch;
  CHECK(bc_cache_batch(cache, 3, &batch) == BC_OK, "bc_cache_batch");
  CHECK(batch.length == ROWS && first_id(&batch) == 3 * ROWS, "batch 3 holds rows 300 to 399");
  CHECK(pulls == 4, "the upstream is pulled up to batch 3 and no further");
  batch.release(&batch);
  struct ArrowArray untouched, before;
  memset(&untouched, 0x5a, sizeof untouched);
  before = untouched;
  CHECK(bc_cache_batch(NULL, 0, &untouched) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "`cache`"),
        "a NULL cache is named");
  CHECK(bc_cache_batch(cache, 0, NULL) == BC_INVALID_ARGUMENT && contains(bc_last_error(), "`out`"),
        "a NULL out is named");
  CHECK(bc_cache_batch(cache, 10, &untouched) == BC_INVALID_ARGUMENT, "past the end fails");
  CHECK(bc_last_error_kind() == BC_ERROR_KIND_OUT_OF_RANGE, "its kind is out of range");
  CHECK(contains(bc_last_error(), "has 10 batches"), "its message has the batch count");
  CHECK(memcmp(&untouched, &before, sizeof before) == 0, "out is untouched on failure");

  uint64_t rows[] = {999, 0, 150, 150, 401};
  CHECK(bc_cache_take(cache, rows, 5, &batch) == BC_OK, "bc_cache_take");
  CHECK(batch.length == 5 && batch.n_children == 2, "one array of the rows asked for");
  int in_order = 1;
  for (int i = 0; i < 5; i++) in_order &= id_at(&batch, i) == (int64_t)rows[i];
  CHECK(in_order, "rows come in the order asked, duplicates too");
  CHECK(bc_cache_take(cache, NULL, 0, &untouched) == BC_OK && untouched.length == 0,
        "no rows gives an empty array");
  untouched.release(&untouched);
  memset(&untouched, 0x5a, sizeof untouched);
  CHECK(bc_cache_take(cache, NULL, 2, &untouched) == BC_INVALID_ARGUMENT &&
            contains(bc_last_error(), "`rows`"),
        "NULL rows with a count are named");
  uint64_t past[] = {3, 1000};
  CHECK(bc_cache_take(cache, past, 2, &untouched) == BC_INVALID_ARGUMENT &&
            bc_last_error_kind() == BC_ERROR_KIND_OUT_OF_RANGE &&
            contains(bc_last_error(), "has 1000 rows"),
        "a row past the end is out of range, with the row count");
  CHECK(memcmp(&untouched, &before, sizeof before) == 0, "out is untouched on failure");
  CHECK(bc_cache_close(cache) == BC_OK, "close");
  CHECK(bc_cache_batch(cache, 0, &untouched) == BC_CLOSED, "a closed cache is BC_CLOSED");
  CHECK(bc_cache_take(cache, rows, 1, &untouched) == BC_CLOSED, "take on it too");
  bc_cache_free(cache);
  CHECK(id_at(&batch, 0) == 999, "taken rows outlive the cache");
  batch.release(&batch);

  pulls = 0;
  cache = new_cache(10, -1, NULL, &pulls);
  uint64_t early[] = {250, 5};
  CHECK(bc_cache_take(cache, early, 2, &batch) == BC_OK && pulls == 3,
        "take pulls only as far as the largest row");
  batch.release(&batch);
  bc_cache_free(cache);

  BcOptions *opts = bc_options_new();
  bc_options_set_max_readers(opts, 1);
  cache = new_cache(3, -1, opts, NULL);
  bc_options_free(opts);
  struct ArrowArrayStream reader;
  bc_cache_reader(cache, true, NULL, &reader);
  CHECK(drain(&reader, NULL) == expected_sum(3), "the one reader reads all");
  CHECK(bc_cache_batch(cache, 0, &untouched) == BC_EVICTED, "an evicted batch is BC_EVICTED");
  CHECK(contains(bc_last_error(), "max_readers"), "its message names max_readers");
  bc_cache_free(cache);
}

static void *replay(void *arg) {
  Job *job = (Job *)arg;
  struct ArrowArrayStream reader;
  job->sum = bc_cache_reader(job->cache, true, NULL, &reader) == BC_OK ? drain(&reader, NULL) : -2;
  return NULL;
}

static void test_threads(void) {
  int64_t pulls = 0;
  BcCache *cache = new_cache(200, -1, NULL, &pulls);
  pthread_t threads[4];
  Job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i].cache = cache;
    pthread_create(&threads[i], NULL, replay, &jobs[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    CHECK(jobs[i].sum == expected_sum(200), "each thread sees the whole stream");
  }
  CHECK(pulls == 201, "one upstream pass for four threads");
  bc_cache_free(cache);
}

int main(void) {
  test_version_and_errors();
  test_new_and_misuse();
  test_options();
  test_replay_exactly_once();
  test_requested_schema();
  test_max_readers_and_capacity();
  test_reader_options();
  test_check_reader_options();
  test_upstream_failure();
  test_lifetimes_and_close();
  test_malformed_upstream();
  test_reader_view();
  test_disk_tier();
  test_persist_and_open();
  test_random_access();
  test_threads();
  return summary("test_capi");
}
