/*
 * Cache a single-use Arrow stream once, then replay it from two readers on two threads.
 *
 * The upstream is a small hand-written Arrow C Stream producer (no Arrow library needed):
 * struct batches of two columns, `id` (int64) and `value` (float64, id / 2). Each reader
 * thread sums both columns; both see every row, although the producer is read only once.
 *
 * Build against an installed libbatchcorder:
 *   cc -std=c11 -pthread replay.c $(pkg-config --cflags --libs batchcorder) -o replay
 */
#define _POSIX_C_SOURCE 200809L
#include <batchcorder.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* The upstream: a minimal Arrow C Stream producer.                                     */
/* ------------------------------------------------------------------------------------ */

static const int64_t BATCH_ROWS[] = {1000, 2500, 500, 4000};
#define N_BATCHES ((int64_t)(sizeof BATCH_ROWS / sizeof BATCH_ROWS[0]))

/* What the producer tells main. It lives in main; the stream frees only its own state. */
typedef struct {
  int get_next_calls;
  int released;
} producer_report;

typedef struct {
  int64_t next_batch; /* index of the batch the next get_next returns */
  int64_t next_id;    /* first id of that batch */
  producer_report *report;
} producer_state;

static void release_leaf_schema(struct ArrowSchema *schema) { schema->release = NULL; }

static void release_struct_schema(struct ArrowSchema *schema) {
  for (int64_t i = 0; i < schema->n_children; i++) {
    struct ArrowSchema *child = schema->children[i];
    if (child != NULL && child->release != NULL) child->release(child);
    free(child);
  }
  free(schema->children);
  schema->release = NULL;
}

static struct ArrowSchema *leaf_schema(const char *format, const char *name) {
  struct ArrowSchema *child = calloc(1, sizeof *child);
  if (child == NULL) return NULL;
  child->format = format; /* static strings: nothing to free */
  child->name = name;
  child->release = release_leaf_schema;
  return child;
}

static int producer_get_schema(struct ArrowArrayStream *stream, struct ArrowSchema *out) {
  (void)stream;
  struct ArrowSchema schema = {.format = "+s", .name = "", .n_children = 2,
                               .release = release_struct_schema};
  schema.children = calloc(2, sizeof *schema.children);
  if (schema.children == NULL) return ENOMEM;
  schema.children[0] = leaf_schema("l", "id");
  schema.children[1] = leaf_schema("g", "value");
  if (schema.children[0] == NULL || schema.children[1] == NULL) {
    release_struct_schema(&schema);
    return ENOMEM;
  }
  *out = schema; /* the consumer releases it */
  return 0;
}

/* A leaf array: buffers[0] is the (absent) validity bitmap, buffers[1] the values. */
static void release_leaf_array(struct ArrowArray *array) {
  free((void *)array->buffers[1]);
  free(array->buffers);
  array->release = NULL;
}

static void release_struct_array(struct ArrowArray *array) {
  for (int64_t i = 0; array->children != NULL && i < array->n_children; i++) {
    struct ArrowArray *child = array->children[i];
    if (child != NULL && child->release != NULL) child->release(child);
    free(child);
  }
  free(array->children);
  free(array->buffers);
  array->release = NULL;
}

static struct ArrowArray *leaf_array(int64_t length, void *values) {
  struct ArrowArray *child = calloc(1, sizeof *child);
  const void **buffers = calloc(2, sizeof *buffers);
  if (child == NULL || buffers == NULL) {
    free(child);
    free(buffers);
    free(values);
    return NULL;
  }
  buffers[1] = values;
  child->length = length;
  child->n_buffers = 2;
  child->buffers = buffers;
  child->release = release_leaf_array;
  return child;
}

static int producer_get_next(struct ArrowArrayStream *stream, struct ArrowArray *out) {
  producer_state *state = stream->private_data;
  state->report->get_next_calls++;
  if (state->next_batch == N_BATCHES) {
    memset(out, 0, sizeof *out); /* the end: a released array */
    return 0;
  }
  int64_t rows = BATCH_ROWS[state->next_batch];
  int64_t *ids = malloc((size_t)rows * sizeof *ids);
  double *values = malloc((size_t)rows * sizeof *values);
  if (ids == NULL || values == NULL) {
    free(ids);
    free(values);
    return ENOMEM;
  }
  for (int64_t i = 0; i < rows; i++) {
    ids[i] = state->next_id + i;
    values[i] = (double)ids[i] / 2.0;
  }
  struct ArrowArray batch = {.length = rows, .n_buffers = 1, .n_children = 2,
                             .release = release_struct_array};
  batch.buffers = calloc(1, sizeof *batch.buffers); /* a struct has only a validity buffer */
  batch.children = calloc(2, sizeof *batch.children);
  if (batch.buffers == NULL || batch.children == NULL) {
    free(ids);
    free(values);
    release_struct_array(&batch);
    return ENOMEM;
  }
  batch.children[0] = leaf_array(rows, ids);
  batch.children[1] = leaf_array(rows, values);
  if (batch.children[0] == NULL || batch.children[1] == NULL) {
    release_struct_array(&batch);
    return ENOMEM;
  }
  state->next_batch++;
  state->next_id += rows;
  *out = batch; /* the consumer releases it */
  return 0;
}

static const char *producer_get_last_error(struct ArrowArrayStream *stream) {
  (void)stream;
  return NULL; /* this producer only fails with ENOMEM, which needs no message */
}

static void producer_release(struct ArrowArrayStream *stream) {
  producer_state *state = stream->private_data;
  state->report->released = 1;
  free(state);
  stream->release = NULL;
}

static int producer_init(struct ArrowArrayStream *out, producer_report *report) {
  producer_state *state = calloc(1, sizeof *state);
  if (state == NULL) return ENOMEM;
  state->report = report;
  out->get_schema = producer_get_schema;
  out->get_next = producer_get_next;
  out->get_last_error = producer_get_last_error;
  out->release = producer_release;
  out->private_data = state;
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* The consumers: each thread opens its own reader and sums both columns.               */
/* ------------------------------------------------------------------------------------ */

typedef struct {
  BcCache *cache; /* shared: bc_cache_* calls are thread-safe */
  int index;
  int64_t batches, rows, sum_id;
  double sum_value;
  int failed;
} replay_job;

static void *replay(void *arg) {
  replay_job *job = arg;
  struct ArrowArrayStream reader;
  if (bc_cache_reader(job->cache, true, NULL, &reader) != BC_OK) {
    /* bc_last_error() is per thread: read it on the thread whose call failed. */
    fprintf(stderr, "reader %d: bc_cache_reader: %s\n", job->index, bc_last_error());
    job->failed = 1;
    return NULL;
  }
  for (;;) {
    struct ArrowArray batch;
    /* The plain Arrow way; bc_reader_next(&reader, &batch) does the same with a BcStatus. */
    int rc = reader.get_next(&reader, &batch);
    if (rc != 0) {
      const char *message = reader.get_last_error(&reader);
      fprintf(stderr, "reader %d: get_next: errno %d: %s\n", job->index, rc,
              message ? message : "(no message)");
      job->failed = 1;
      break;
    }
    if (batch.release == NULL) break; /* end of stream */
    const struct ArrowArray *id_col = batch.children[0];
    const struct ArrowArray *value_col = batch.children[1];
    /* No nulls in this data, so only the offsets matter. */
    const int64_t *ids = (const int64_t *)id_col->buffers[1] + batch.offset + id_col->offset;
    const double *values =
        (const double *)value_col->buffers[1] + batch.offset + value_col->offset;
    for (int64_t i = 0; i < batch.length; i++) {
      job->sum_id += ids[i];
      job->sum_value += values[i];
    }
    job->batches++;
    job->rows += batch.length;
    batch.release(&batch); /* the consumer releases every array it receives */
  }
  reader.release(&reader); /* ... and every reader */
  return NULL;
}

int main(void) {
  printf("libbatchcorder %s (header %d.%d.%d)\n", bc_version(), BATCHCORDER_VERSION_MAJOR,
         BATCHCORDER_VERSION_MINOR, BATCHCORDER_VERSION_PATCH);

  producer_report report = {0};
  struct ArrowArrayStream upstream;
  if (producer_init(&upstream, &report) != 0) return 1;

  /* Errors come back as a BcStatus, with the message in bc_last_error(). */
  BcOptions *opts = bc_options_new();
  if (opts == NULL) return 1;
  if (bc_options_set_max_readers(opts, 0) != BC_OK)
    printf("expected error: %s\n", bc_last_error());
  bc_options_set_max_readers(opts, 2); /* two readers: batches both passed are evicted */

  BcCache *cache = NULL;
  BcStatus status = bc_cache_new(&upstream, opts, &cache); /* moves upstream on success */
  bc_options_free(opts);                                   /* copied by bc_cache_new */
  if (status != BC_OK) {
    fprintf(stderr, "bc_cache_new: %s\n", bc_last_error());
    upstream.release(&upstream); /* on failure the caller still owns it */
    return 1;
  }

  struct ArrowSchema schema;
  if (bc_cache_schema(cache, &schema) != BC_OK) {
    fprintf(stderr, "bc_cache_schema: %s\n", bc_last_error());
    bc_cache_free(cache);
    return 1;
  }
  printf("schema:");
  for (int64_t i = 0; i < schema.n_children; i++)
    printf(" %s (%s)", schema.children[i]->name, schema.children[i]->format);
  printf("\n");
  schema.release(&schema);

  replay_job jobs[2];
  pthread_t threads[2];
  for (int i = 0; i < 2; i++) {
    jobs[i] = (replay_job){.cache = cache, .index = i};
    if (pthread_create(&threads[i], NULL, replay, &jobs[i]) != 0) {
      fprintf(stderr, "pthread_create failed\n");
      return 1;
    }
  }
  for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);

  int64_t total_rows = 0;
  for (int64_t b = 0; b < N_BATCHES; b++) total_rows += BATCH_ROWS[b];
  int64_t want_sum_id = total_rows * (total_rows - 1) / 2;
  double want_sum_value = (double)want_sum_id / 2.0; /* exact: all values are halves */

  int ok = 1;
  for (int i = 0; i < 2; i++) {
    printf("reader %d: %lld batches, %lld rows, sum(id) = %lld, sum(value) = %.1f\n", i,
           (long long)jobs[i].batches, (long long)jobs[i].rows, (long long)jobs[i].sum_id,
           jobs[i].sum_value);
    ok = ok && !jobs[i].failed && jobs[i].batches == N_BATCHES && jobs[i].rows == total_rows &&
         jobs[i].sum_id == want_sum_id && jobs[i].sum_value == want_sum_value;
  }

  BcStats stats;
  if (bc_cache_stats(cache, &stats) != BC_OK) {
    fprintf(stderr, "bc_cache_stats: %s\n", bc_last_error());
    ok = 0;
  } else {
    printf("cache: %llu batches, %llu rows ingested; %llu readers created; %llu evicted\n",
           (unsigned long long)stats.batches_ingested, (unsigned long long)stats.rows_ingested,
           (unsigned long long)stats.readers_created, (unsigned long long)stats.batches_evicted);
    ok = ok && stats.batches_ingested == (uint64_t)N_BATCHES &&
         stats.rows_ingested == (uint64_t)total_rows && stats.readers_created == 2;
  }
  bc_cache_free(cache); /* readers are gone; this also releases the upstream */

  printf("upstream: %d get_next calls for %lld batches, released: %s\n", report.get_next_calls,
         (long long)N_BATCHES, report.released ? "yes" : "no");
  ok = ok && report.get_next_calls == N_BATCHES + 1 && report.released;

  printf("%s\n", ok ? "OK: one upstream pass, two full replays" : "FAILED");
  return ok ? 0 : 1;
}
