/* C-level replay cost: ns per batch for get_next + release on a cached reader, next to a
 * plain loop over the same batches held in an array. Prints one JSON line. */
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
  printf("{\"impl\": \"ours\", \"workload\": \"c-level\", \"ns_per_batch\": %.1f, "
         "\"plain_ns_per_batch\": %.1f, \"rows_checksum\": %lld}\n",
         best_cache / (double)batches, best_plain / (double)batches, (long long)rows);
  return 0;
}
