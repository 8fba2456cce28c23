/* The processes of the crash-leftover test (tests/c/crash.sh runs them, kills some and
 * checks what is left):
 *   test_crash hold DIR spill STOP   a disk-tier cache spilling into DIR
 *   test_crash hold DIR save STOP    a cache saving to DIR/saved-<n>, its stream unfinished
 *     each prints "ready" once its folder is in DIR, then waits until the file STOP exists
 *     (at most two minutes), frees the cache (which removes the folder) and exits 0;
 *   test_crash sweep DIR             a new disk-tier cache in DIR, which removes the folders
 *     of dead owners: prints "entry NAME" for each entry of DIR while it lives;
 *   test_crash churn DIR STOP TAG    makes, reads and drops a disk-tier cache and a save
 *     (DIR/save-TAG-<round>) in DIR, round after round, printing "ready" after the first,
 *     until the file STOP exists (at most two minutes): prints "rounds N", and exits 1 if
 *     anything read back wrong (a sweep took a live folder, say);
 *   test_crash verify DIR            opens every save in DIR, verifying each batch, and reads
 *     it back: prints "saves N", exits 1 if one is not whole. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batchcorder.h"
#include "portable.h"
#include "producer.h"

static int exists(const char *path) { return access(path, F_OK) == 0; }

static int fail(const char *what) {
  printf("test_crash: %s: %s\n", what, bc_last_error());
  return 1;
}

/* A cache over a long stream that spills everything into `dir`. */
static BcCache *spilling_cache(const char *dir) {
  BcOptions *opts = bc_options_new();
  BcCache *cache = NULL;
  struct ArrowArrayStream up = make_producer(1000, 100, -1, 0, NULL);
  if (bc_options_set_disk(opts, dir, 1 << 26) != BC_OK || bc_options_set_memory_capacity(opts, 1) != BC_OK ||
      bc_options_set_segment_bytes(opts, 8192) != BC_OK || bc_cache_new(&up, opts, &cache) != BC_OK) {
    if (up.release != NULL) up.release(&up);
    cache = NULL;
  }
  bc_options_free(opts);
  return cache;
}

/* A cache that saves to a new name in `dir` as it ingests. */
static BcCache *saving_cache(const char *dir) {
  char path[400];
  snprintf(path, sizeof path, "%s" SEP "saved-%ld", dir, (long)getpid());
  BcOptions *opts = bc_options_new();
  BcCache *cache = NULL;
  struct ArrowArrayStream up = make_producer(1000, 100, -1, 0, NULL);
  if (bc_options_set_persist(opts, path) != BC_OK || bc_cache_new(&up, opts, &cache) != BC_OK) {
    if (up.release != NULL) up.release(&up);
    cache = NULL;
  }
  bc_options_free(opts);
  return cache;
}

/* The sum of the ids a whole reader gives; -1 on an error. */
static int64_t drain_ids(BcCache *cache) {
  struct ArrowArrayStream reader;
  if (bc_cache_reader(cache, true, NULL, &reader) != BC_OK) return -1;
  int64_t sum = 0;
  struct ArrowArray batch;
  for (;;) {
    if (reader.get_next(&reader, &batch) != 0) {
      sum = -1;
      break;
    }
    if (batch.release == NULL) break;
    const int64_t *ids = (const int64_t *)batch.children[0]->buffers[1];
    for (int64_t i = 0; i < batch.length; i++) sum += ids[i];
    batch.release(&batch);
  }
  reader.release(&reader);
  return sum;
}

/* What the churn's streams hold: 5 batches of 100 ids, 0 to 499. */
#define CHURN_BATCHES 5
#define CHURN_SUM ((int64_t)(CHURN_BATCHES * 100) * (CHURN_BATCHES * 100 - 1) / 2)

/* A save at `path` opens, every batch verified, and holds the churn's stream. */
static int whole_save(const char *path) {
  BcCache *opened = NULL;
  if (bc_cache_open(path, BC_VERIFY_ALWAYS, NULL, NULL, &opened) != BC_OK) return 0;
  int whole = drain_ids(opened) == CHURN_SUM;
  bc_cache_free(opened);
  return whole;
}

static int churn(const char *dir, const char *stop, const char *tag) {
  time_t until = time(NULL) + 120;
  long n = 0;
  for (; !exists(stop) && time(NULL) < until; n++) {
    BcOptions *opts = bc_options_new();
    struct ArrowArrayStream up = make_producer(CHURN_BATCHES, 100, -1, 0, NULL);
    BcCache *spilled = NULL;
    if (bc_options_set_disk(opts, dir, 1 << 20) != BC_OK || bc_options_set_memory_capacity(opts, 1) != BC_OK ||
        bc_options_set_segment_bytes(opts, 4096) != BC_OK || bc_cache_new(&up, opts, &spilled) != BC_OK)
      return fail("churn: no disk-tier cache");
    bc_options_free(opts);
    int64_t sum = drain_ids(spilled);
    bc_cache_free(spilled);
    if (sum != CHURN_SUM) return fail("churn: the disk tier read back wrong");

    char path[400];
    snprintf(path, sizeof path, "%s" SEP "save-%s-%ld", dir, tag, n);
    up = make_producer(CHURN_BATCHES, 100, -1, 0, NULL);
    BcCache *saving = NULL;
    if (bc_cache_new(&up, NULL, &saving) != BC_OK) return fail("churn: no cache");
    if (bc_cache_persist(saving, path, NULL) != BC_OK) return fail("churn: persist");
    bc_cache_free(saving);
    if (!whole_save(path)) return fail("churn: the save read back wrong");
    if (n == 0) {
      printf("ready\n");
      fflush(stdout);
    }
  }
  printf("rounds %ld\n", n);
  return 0;
}

static int verify(const char *dir) {
  DIR *entries = opendir(dir);
  if (entries == NULL) return fail("opendir");
  int saves = 0, broken = 0;
  for (struct dirent *entry; (entry = readdir(entries)) != NULL;) {
    if (strncmp(entry->d_name, "save-", 5) != 0) continue;
    char path[400];
    snprintf(path, sizeof path, "%s" SEP "%s", dir, entry->d_name);
    saves++;
    if (!whole_save(path)) {
      broken++;
      printf("not whole: %s: %s\n", entry->d_name, bc_last_error());
    }
  }
  closedir(entries);
  printf("saves %d\n", saves);
  return broken == 0 ? 0 : 1;
}

static int hold(const char *dir, const char *kind, const char *stop) {
  BcCache *cache = strcmp(kind, "save") == 0 ? saving_cache(dir) : spilling_cache(dir);
  if (cache == NULL) return fail("no cache");
  /* 20 of the stream's 1000 batches: on disk, or written to the unfinished save. */
  for (int i = 0; i < 20; i++) {
    bool pulled = false;
    if (bc_cache_ingest_next(cache, &pulled) != BC_OK || !pulled) return fail("ingest");
  }
  printf("ready\n");
  fflush(stdout);
  for (int waited = 0; waited < 120000 && !exists(stop); waited += 20) sleep_ms(20);
  bc_cache_free(cache);
  return 0;
}

static int sweep(const char *dir) {
  BcCache *cache = spilling_cache(dir);
  if (cache == NULL) return fail("no cache");
  bool pulled = false;
  if (bc_cache_ingest_next(cache, &pulled) != BC_OK || !pulled) return fail("ingest");
  DIR *entries = opendir(dir);
  if (entries == NULL) return fail("opendir");
  for (struct dirent *entry; (entry = readdir(entries)) != NULL;) {
    if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0) {
      printf("entry %s\n", entry->d_name);
    }
  }
  closedir(entries);
  bc_cache_free(cache);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "hold") == 0) return hold(argv[2], argv[3], argv[4]);
  if (argc == 3 && strcmp(argv[1], "sweep") == 0) return sweep(argv[2]);
  if (argc == 5 && strcmp(argv[1], "churn") == 0) return churn(argv[2], argv[3], argv[4]);
  if (argc == 3 && strcmp(argv[1], "verify") == 0) return verify(argv[2]);
  fprintf(stderr, "usage: test_crash hold DIR spill|save STOP | sweep DIR | churn DIR STOP TAG | verify DIR\n");
  return 2;
}
