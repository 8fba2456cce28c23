/* C-level cost per batch, printed as one JSON line: replay (get_next + release on a cached
 * reader, next to a plain loop over the same batches held in an array) and ingestion
 * (bc_cache_new + bc_cache_ingest_all, next to pulling and releasing the producer's
 * batches alone). Best of 5 rounds each. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../tests/c/producer.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  int64_t batches = argc > 1 ? atoll(argv[1]) : 100000;
  struct ArrowArrayStream up = make_producer(batches, 64, -1, 0, NULL);
  BcCache *cache = NULL;
  if (bc_cache_new(&up, NULL, &cache) != BC_OK || bc_cache_ingest_all(cache, NULL) != BC_OK) {
    fprintf(stderr, "setup failed: %s\n", bc_last_error());
    return 1;
  }
  /* The same batches, held in a plain array. */
  struct ArrowArray *held = calloc((size_t)batches, sizeof *held);
  struct ArrowArrayStream reader;
  bc_cache_reader(cache, true, NULL, &reader);
  for (int64_t i = 0; i < batches; i++) reader.get_next(&reader, &held[i]);
  reader.release(&reader);

  double best_cache = 1e30, best_plain = 1e30;
  int64_t rows = 0;
  for (int round = 0; round < 5; round++) {
    bc_cache_reader(cache, true, NULL, &reader);
    double start = now_ns();
    struct ArrowArray batch;
    while (reader.get_next(&reader, &batch) == 0 && batch.release != NULL) {
      rows += batch.length;
      batch.release(&batch);
    }
    double elapsed = now_ns() - start;
    reader.release(&reader);
    if (elapsed < best_cache) best_cache = elapsed;

    start = now_ns();
    for (int64_t i = 0; i < batches; i++) {
      struct ArrowArray moved = held[i]; /* what a consumer does with an array it is given */
      rows += moved.length;
    }
    elapsed = now_ns() - start;
    if (elapsed < best_plain) best_plain = elapsed;
  }
  for (int64_t i = 0; i < batches; i++) held[i].release(&held[i]);
  free(held);
  bc_cache_free(cache);

  /* Ingestion: every batch checked and kept, against the producer's own cost. */
  double best_ingest = 1e30, best_producer = 1e30;
  for (int round = 0; round < 5; round++) {
    struct ArrowArrayStream fresh = make_producer(batches, 64, -1, 0, NULL);
    BcCache *ingested = NULL;
    double start = now_ns();
    if (bc_cache_new(&fresh, NULL, &ingested) != BC_OK ||
        bc_cache_ingest_all(ingested, NULL) != BC_OK) {
      fprintf(stderr, "ingestion failed: %s\n", bc_last_error());
      return 1;
    }
    double elapsed = now_ns() - start;
    bc_cache_free(ingested);
    if (elapsed < best_ingest) best_ingest = elapsed;

    struct ArrowArrayStream alone = make_producer(batches, 64, -1, 0, NULL);
    start = now_ns();
    struct ArrowArray batch;
    while (alone.get_next(&alone, &batch) == 0 && batch.release != NULL) {
      rows += batch.length;
      batch.release(&batch);
    }
    elapsed = now_ns() - start;
    alone.release(&alone);
    if (elapsed < best_producer) best_producer = elapsed;
  }
  printf("{\"impl\": \"ours\", \"workload\": \"c-level\", \"ns_per_batch\": %.1f, "
         "\"plain_ns_per_batch\": %.1f, \"ingest_ns_per_batch\": %.1f, "
         "\"producer_ns_per_batch\": %.1f, \"rows_checksum\": %lld}\n",
         best_cache / (double)batches, best_plain / (double)batches,
         best_ingest / (double)batches, best_producer / (double)batches, (long long)rows);
  return 0;
}
