/* A small hand-written Arrow C stream producer for the C tests: N batches of
 * {id: int64, x: float64}, ROWS rows each, optionally failing at batch FAIL_AT, or handing
 * over a malformed batch (one child for two fields) at MALFORMED_AT. */
#ifndef BC_TEST_PRODUCER_H
#define BC_TEST_PRODUCER_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "batchcorder.h"

typedef struct {
  int64_t batches, rows, next, fail_at; /* fail_at < 0: never */
  int64_t malformed_at;                  /* < 0: never */
  int fail_errno, fail_schema;
  int64_t *pulls; /* caller-owned counter of get_next calls, may be NULL */
} Producer;

static void release_schema(struct ArrowSchema *s) {
  for (int64_t i = 0; i < s->n_children; i++) {
    if (s->children[i]->release) s->children[i]->release(s->children[i]);
    free(s->children[i]);
  }
  free(s->children);
  s->release = NULL;
}

static void fill_child_schema(struct ArrowSchema *c, const char *format, const char *name) {
  memset(c, 0, sizeof *c);
  c->format = format;
  c->name = name;
  c->release = release_schema;
}

static int producer_schema(struct ArrowArrayStream *stream, struct ArrowSchema *out) {
  Producer *p = (Producer *)stream->private_data;
  if (p->fail_schema) return EIO;
  memset(out, 0, sizeof *out);
  out->format = "+s";
  out->n_children = 2;
  out->children = (struct ArrowSchema **)calloc(2, sizeof(struct ArrowSchema *));
  out->children[0] = (struct ArrowSchema *)malloc(sizeof(struct ArrowSchema));
  out->children[1] = (struct ArrowSchema *)malloc(sizeof(struct ArrowSchema));
  fill_child_schema(out->children[0], "l", "id");
  fill_child_schema(out->children[1], "g", "x");
  out->release = release_schema;
  return 0;
}

static void release_array(struct ArrowArray *a) {
  for (int64_t i = 0; i < a->n_children; i++) {
    if (a->children[i]->release) a->children[i]->release(a->children[i]);
    free(a->children[i]);
  }
  free(a->children);
  for (int64_t i = 0; i < a->n_buffers; i++) free((void *)a->buffers[i]);
  free(a->buffers);
  a->release = NULL;
}

static struct ArrowArray *column(int64_t rows, void *data) {
  struct ArrowArray *c = (struct ArrowArray *)calloc(1, sizeof *c);
  c->length = rows;
  c->n_buffers = 2;
  c->buffers = (const void **)calloc(2, sizeof(void *));
  c->buffers[1] = data;
  c->release = release_array;
  return c;
}

static int producer_next(struct ArrowArrayStream *stream, struct ArrowArray *out) {
  Producer *p = (Producer *)stream->private_data;
  if (p->pulls) (*p->pulls)++;
  if (p->next == p->fail_at) return p->fail_errno;
  memset(out, 0, sizeof *out);
  if (p->next == p->batches) return 0; /* released array: end of stream */
  int64_t *ids = (int64_t *)malloc((size_t)p->rows * sizeof(int64_t));
  double *xs = (double *)malloc((size_t)p->rows * sizeof(double));
  for (int64_t i = 0; i < p->rows; i++) {
    ids[i] = p->next * p->rows + i;
    xs[i] = (double)ids[i] / 2;
  }
  out->length = p->rows;
  out->n_buffers = 1;
  out->buffers = (const void **)calloc(1, sizeof(void *));
  out->n_children = p->next == p->malformed_at ? 1 : 2;
  out->children = (struct ArrowArray **)calloc(2, sizeof(struct ArrowArray *));
  out->children[0] = column(p->rows, ids);
  if (out->n_children == 2) {
    out->children[1] = column(p->rows, xs);
  } else {
    free(xs);
  }
  out->release = release_array;
  p->next++;
  return 0;
}

static const char *producer_error(struct ArrowArrayStream *stream) {
  (void)stream;
  return "producer broke on purpose";
}

static void producer_release(struct ArrowArrayStream *stream) {
  free(stream->private_data);
  stream->release = NULL;
}

/* A live stream; `pulls` (may be NULL) counts its get_next calls. */
static struct ArrowArrayStream make_producer(int64_t batches, int64_t rows, int64_t fail_at,
                                             int fail_errno, int64_t *pulls) {
  Producer *p = (Producer *)calloc(1, sizeof *p);
  p->batches = batches;
  p->rows = rows;
  p->fail_at = fail_at;
  p->fail_errno = fail_errno;
  p->malformed_at = -1;
  p->pulls = pulls;
  struct ArrowArrayStream s;
  s.get_schema = producer_schema;
  s.get_next = producer_next;
  s.get_last_error = producer_error;
  s.release = producer_release;
  s.private_data = p;
  return s;
}

#endif
