/* The processes of the crash-leftover test (tests/c/crash.sh runs them, kills some and
 * checks what is left):
 *   test_crash hold DIR spill STOP   a disk-tier cache spilling into DIR
 *   test_crash hold DIR save STOP    a cache saving to DIR/saved-<n>, its stream unfinished
 *     each prints "ready" once its folder is in DIR, then waits until the file STOP exists
 *     (at most two minutes), frees the cache (which removes the folder) and exits 0;
 *   test_crash sweep DIR             a new disk-tier cache in DIR, which removes the folders
 *     of dead owners: prints "entry NAME" for each entry of DIR while it lives. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "batchcorder.h"
#include "portable.h"
#include "producer.h"

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

static int exists(const char *path) { return access(path, F_OK) == 0; }

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
  fprintf(stderr, "usage: test_crash hold DIR spill|save STOP | test_crash sweep DIR\n");
  return 2;
}
