/*
 * bcr.c: minimal R glue for libbatchcorder, built with R CMD SHLIB (see docs/c-users.md):
 *
 *   PKG_CPPFLAGS="$(pkg-config --cflags batchcorder)" \
 *   PKG_LIBS="$(pkg-config --libs batchcorder) -Wl,-rpath,$(pkg-config --variable=libdir batchcorder)" \
 *   R CMD SHLIB -o bcr.so bcr.c
 *
 * Streams cross into R as external pointers to a `struct ArrowArrayStream`, as the
 * nanoarrow and arrow R packages hold them, or as their address (a decimal string, as
 * nanoarrow::nanoarrow_pointer_addr_chr() gives, or a double). So a stream made by
 * nanoarrow or arrow can be handed to bcr_cache_new() as it is, and a bcr reader can be
 * moved into a nanoarrow stream with nanoarrow::nanoarrow_pointer_move().
 *
 * .Call entry points:
 *   bcr_version()                          -> "MAJOR.MINOR.PATCH"
 *   bcr_demo_stream(n_batches, rows)       -> a stream of (id int64, value double) batches
 *   bcr_stream_addr(stream)                -> its address as a decimal string
 *   bcr_stream_is_released(stream)         -> TRUE once moved or released
 *   bcr_cache_new(stream, max_readers)     -> a cache; moves the stream (NA: no reader cap)
 *   bcr_cache_reader(cache, from_start)    -> a new reader stream
 *   bcr_reader_drain(reader)               -> c(batches, rows, int64_sum, double_sum)
 *   bcr_cache_stats(cache)                 -> named numeric vector of BcStats
 *   bcr_cache_close(cache)                 -> NULL; readers then fail cleanly
 */
#define R_NO_REMAP /* Rinternals.h would otherwise #define length(), clashing with Arrow's */
#include <R.h>
#include <R_ext/Rdynload.h>
#include <Rinternals.h>

#include <batchcorder.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- streams as R objects ---------------------------------------------------------- */

static void stream_finalizer(SEXP xptr) {
  bc_stream_free(R_ExternalPtrAddr(xptr)); /* releases it if still live, frees the struct */
  R_ClearExternalPtr(xptr);
}

/* A new R external pointer owning a released stream from bc_stream_new(). */
static SEXP new_stream_xptr(struct ArrowArrayStream **out) {
  struct ArrowArrayStream *stream = bc_stream_new();
  if (stream == NULL) Rf_error("bc_stream_new: out of memory");
  SEXP xptr = PROTECT(R_MakeExternalPtr(stream, Rf_install("arrow_array_stream"), R_NilValue));
  R_RegisterCFinalizerEx(xptr, stream_finalizer, TRUE);
  UNPROTECT(1);
  *out = stream;
  return xptr;
}

/* The stream behind an external pointer (ours, nanoarrow's or arrow's) or an address. */
static struct ArrowArrayStream *stream_arg(SEXP x, const char *name) {
  void *ptr = NULL;
  if (TYPEOF(x) == EXTPTRSXP) {
    ptr = R_ExternalPtrAddr(x);
  } else if (TYPEOF(x) == STRSXP && Rf_length(x) == 1) {
    const char *text = CHAR(STRING_ELT(x, 0));
    char *end = NULL;
    errno = 0;
    uintmax_t addr = strtoumax(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
      Rf_error("`%s`: '%s' is not a decimal address", name, text);
    ptr = (void *)(uintptr_t)addr;
  } else if (TYPEOF(x) == REALSXP && Rf_length(x) == 1) {
    ptr = (void *)(uintptr_t)REAL(x)[0];
  } else {
    Rf_error("`%s` must be an external pointer to an ArrowArrayStream, or its address", name);
  }
  if (ptr == NULL) Rf_error("`%s` is a NULL pointer", name);
  return ptr;
}

SEXP bcr_stream_addr(SEXP stream) {
  char text[32];
  snprintf(text, sizeof text, "%" PRIuPTR, (uintptr_t)stream_arg(stream, "stream"));
  return Rf_mkString(text);
}

SEXP bcr_stream_is_released(SEXP stream) {
  return Rf_ScalarLogical(stream_arg(stream, "stream")->release == NULL);
}

/* ---- a small Arrow producer, standing in for nanoarrow or arrow -------------------- */

typedef struct {
  int n_batches, rows, next_batch;
} demo_state;

static void release_leaf_schema(struct ArrowSchema *s) { s->release = NULL; }

static void release_struct_schema(struct ArrowSchema *s) {
  for (int64_t i = 0; i < s->n_children; i++) {
    if (s->children[i]->release != NULL) s->children[i]->release(s->children[i]);
    free(s->children[i]);
  }
  free(s->children);
  s->release = NULL;
}

static int demo_get_schema(struct ArrowArrayStream *stream, struct ArrowSchema *out) {
  (void)stream;
  static const char *formats[2] = {"l", "g"}, *names[2] = {"id", "value"};
  struct ArrowSchema **children = calloc(2, sizeof *children);
  if (children == NULL) return ENOMEM;
  for (int i = 0; i < 2; i++) {
    children[i] = calloc(1, sizeof **children);
    if (children[i] == NULL) {
      free(children[0]);
      free(children);
      return ENOMEM;
    }
    children[i]->format = formats[i];
    children[i]->name = names[i];
    children[i]->release = release_leaf_schema;
  }
  memset(out, 0, sizeof *out);
  out->format = "+s";
  out->name = "";
  out->n_children = 2;
  out->children = children;
  out->release = release_struct_schema;
  return 0;
}

static void release_leaf_array(struct ArrowArray *a) {
  free((void *)a->buffers[1]);
  free(a->buffers);
  a->release = NULL;
}

static void release_struct_array(struct ArrowArray *a) {
  for (int64_t i = 0; a->children != NULL && i < a->n_children; i++) {
    if (a->children[i] != NULL && a->children[i]->release != NULL)
      a->children[i]->release(a->children[i]);
    free(a->children[i]);
  }
  free(a->children);
  free(a->buffers);
  a->release = NULL;
}

static int demo_get_next(struct ArrowArrayStream *stream, struct ArrowArray *out) {
  demo_state *state = stream->private_data;
  memset(out, 0, sizeof *out);
  if (state->next_batch == state->n_batches) return 0; /* end: a released array */
  int64_t first = (int64_t)state->next_batch * state->rows;
  struct ArrowArray batch = {.length = state->rows, .n_buffers = 1, .n_children = 2,
                             .release = release_struct_array};
  batch.buffers = calloc(1, sizeof *batch.buffers);
  batch.children = calloc(2, sizeof *batch.children);
  if (batch.buffers == NULL || batch.children == NULL) goto oom;
  for (int c = 0; c < 2; c++) {
    struct ArrowArray *child = calloc(1, sizeof *child);
    const void **buffers = calloc(2, sizeof *buffers);
    void *values = malloc((size_t)state->rows * 8);
    if (child == NULL || buffers == NULL || values == NULL) {
      free(child);
      free(buffers);
      free(values);
      goto oom;
    }
    for (int64_t i = 0; i < state->rows; i++) {
      if (c == 0) ((int64_t *)values)[i] = first + i;
      else ((double *)values)[i] = (double)(first + i) / 2.0;
    }
    buffers[1] = values;
    *child = (struct ArrowArray){.length = state->rows, .n_buffers = 2, .buffers = buffers,
                                 .release = release_leaf_array};
    batch.children[c] = child;
  }
  state->next_batch++;
  *out = batch;
  return 0;
oom:
  release_struct_array(&batch);
  return ENOMEM;
}

static const char *demo_get_last_error(struct ArrowArrayStream *stream) {
  (void)stream;
  return NULL;
}

static void demo_release(struct ArrowArrayStream *stream) {
  free(stream->private_data);
  stream->release = NULL;
}

SEXP bcr_demo_stream(SEXP n_batches, SEXP rows) {
  int nb = Rf_asInteger(n_batches), nr = Rf_asInteger(rows);
  if (nb == NA_INTEGER || nb < 0 || nr == NA_INTEGER || nr < 0)
    Rf_error("n_batches and rows must be non-negative integers");
  demo_state *state = calloc(1, sizeof *state);
  if (state == NULL) Rf_error("out of memory");
  *state = (demo_state){nb, nr, 0};
  struct ArrowArrayStream *stream;
  SEXP xptr = PROTECT(new_stream_xptr(&stream)); /* frees `state` via release from now on */
  *stream = (struct ArrowArrayStream){demo_get_schema, demo_get_next, demo_get_last_error,
                                      demo_release, state};
  UNPROTECT(1);
  return xptr;
}

/* ---- the cache ---------------------------------------------------------------------- */

static void cache_finalizer(SEXP xptr) {
  bc_cache_free(R_ExternalPtrAddr(xptr)); /* readers already handed out stay valid */
  R_ClearExternalPtr(xptr);
}

static BcCache *cache_arg(SEXP x) {
  if (TYPEOF(x) != EXTPTRSXP || R_ExternalPtrTag(x) != Rf_install("bc_cache"))
    Rf_error("`cache` must come from bcr_cache_new()");
  BcCache *cache = R_ExternalPtrAddr(x);
  if (cache == NULL) Rf_error("`cache` was freed");
  return cache;
}

/* bc_last_error() is per thread and valid until the next bc_* call: copy it out at once.
 * Rf_error() formats (copies) the message before it unwinds. */
static void fail(const char *call) { Rf_error("%s: %s", call, bc_last_error()); }

SEXP bcr_version(void) { return Rf_mkString(bc_version()); }

SEXP bcr_cache_new(SEXP stream, SEXP max_readers) {
  struct ArrowArrayStream *upstream = stream_arg(stream, "stream");
  double readers = Rf_asReal(max_readers);
  BcOptions *opts = bc_options_new();
  if (opts == NULL) Rf_error("bc_options_new: out of memory");
  if (!ISNAN(readers) && bc_options_set_max_readers(opts, (uint64_t)readers) != BC_OK) {
    char message[512];
    snprintf(message, sizeof message, "%s", bc_last_error());
    bc_options_free(opts);
    Rf_error("bc_options_set_max_readers: %s", message);
  }
  BcCache *cache = NULL;
  BcStatus status = bc_cache_new(upstream, opts, &cache); /* moves *upstream on success */
  if (status != BC_OK) {
    char message[512];
    snprintf(message, sizeof message, "%s", bc_last_error());
    bc_options_free(opts); /* the stream is still the caller's, untouched */
    Rf_error("bc_cache_new: %s", message);
  }
  bc_options_free(opts);
  SEXP xptr = PROTECT(R_MakeExternalPtr(cache, Rf_install("bc_cache"), R_NilValue));
  R_RegisterCFinalizerEx(xptr, cache_finalizer, TRUE);
  UNPROTECT(1);
  return xptr;
}

SEXP bcr_cache_reader(SEXP cache_sexp, SEXP from_start) {
  BcCache *cache = cache_arg(cache_sexp);
  int start = Rf_asLogical(from_start);
  if (start == NA_LOGICAL) Rf_error("`from_start` must be TRUE or FALSE");
  struct ArrowArrayStream *reader;
  SEXP xptr = PROTECT(new_stream_xptr(&reader));
  if (bc_cache_reader(cache, start, NULL, reader) != BC_OK) fail("bc_cache_reader");
  UNPROTECT(1);
  return xptr;
}

static int valid(const struct ArrowArray *a, int64_t i) {
  const uint8_t *bits = a->null_count == 0 ? NULL : a->buffers[0];
  return bits == NULL || (bits[i >> 3] >> (i & 7)) & 1;
}

/* Reads the reader to its end: batch and row counts, and the sums of all int64 and all
 * double columns (nulls skipped). The reader is then at its end; release it with rm(). */
SEXP bcr_reader_drain(SEXP reader_sexp) {
  struct ArrowArrayStream *reader = stream_arg(reader_sexp, "reader");
  if (reader->release == NULL) Rf_error("`reader` was released or moved");
  struct ArrowSchema schema;
  if (reader->get_schema(reader, &schema) != 0) {
    const char *message = reader->get_last_error(reader);
    Rf_error("get_schema: %s", message ? message : "failed");
  }
  char kinds[64] = {0}; /* per column: 'l' int64, 'g' double, 0 other */
  int64_t n_columns = schema.n_children < 64 ? schema.n_children : 64;
  for (int64_t c = 0; c < n_columns; c++) {
    const char *format = schema.children[c]->format;
    kinds[c] = (strcmp(format, "l") == 0 || strcmp(format, "g") == 0) ? format[0] : 0;
  }
  schema.release(&schema);

  double batches = 0, rows = 0, int_sum = 0, dbl_sum = 0;
  for (;;) {
    struct ArrowArray batch;
    if (bc_reader_next(reader, &batch) != BC_OK) fail("bc_reader_next");
    if (batch.release == NULL) break;
    for (int64_t c = 0; c < n_columns && c < batch.n_children; c++) {
      const struct ArrowArray *col = batch.children[c];
      int64_t offset = batch.offset + col->offset;
      for (int64_t i = 0; i < batch.length; i++) {
        if (!valid(col, offset + i)) continue;
        if (kinds[c] == 'l') int_sum += (double)((const int64_t *)col->buffers[1])[offset + i];
        if (kinds[c] == 'g') dbl_sum += ((const double *)col->buffers[1])[offset + i];
      }
    }
    batches += 1;
    rows += (double)batch.length;
    batch.release(&batch);
  }
  SEXP out = PROTECT(Rf_allocVector(REALSXP, 4));
  SEXP names = PROTECT(Rf_allocVector(STRSXP, 4));
  const char *labels[4] = {"batches", "rows", "int64_sum", "double_sum"};
  double values[4] = {batches, rows, int_sum, dbl_sum};
  for (int i = 0; i < 4; i++) {
    REAL(out)[i] = values[i];
    SET_STRING_ELT(names, i, Rf_mkChar(labels[i]));
  }
  Rf_setAttrib(out, R_NamesSymbol, names);
  UNPROTECT(2);
  return out;
}

SEXP bcr_cache_stats(SEXP cache_sexp) {
  BcStats stats;
  if (bc_cache_stats(cache_arg(cache_sexp), &stats) != BC_OK) fail("bc_cache_stats");
  const char *labels[] = {"batches_ingested", "rows_ingested", "memory_bytes", "disk_bytes",
                          "batches_evicted", "readers_live", "readers_created",
                          "upstream_exhausted"};
  double values[] = {(double)stats.batches_ingested, (double)stats.rows_ingested,
                     (double)stats.memory_bytes, (double)stats.disk_bytes,
                     (double)stats.batches_evicted, (double)stats.readers_live,
                     (double)stats.readers_created, stats.upstream_exhausted ? 1.0 : 0.0};
  int n = (int)(sizeof values / sizeof values[0]);
  SEXP out = PROTECT(Rf_allocVector(REALSXP, n));
  SEXP names = PROTECT(Rf_allocVector(STRSXP, n));
  for (int i = 0; i < n; i++) {
    REAL(out)[i] = values[i];
    SET_STRING_ELT(names, i, Rf_mkChar(labels[i]));
  }
  Rf_setAttrib(out, R_NamesSymbol, names);
  UNPROTECT(2);
  return out;
}

SEXP bcr_cache_close(SEXP cache_sexp) {
  if (bc_cache_close(cache_arg(cache_sexp)) != BC_OK) fail("bc_cache_close");
  return R_NilValue;
}

static const R_CallMethodDef call_methods[] = {
    {"bcr_version", (DL_FUNC)&bcr_version, 0},
    {"bcr_demo_stream", (DL_FUNC)&bcr_demo_stream, 2},
    {"bcr_stream_addr", (DL_FUNC)&bcr_stream_addr, 1},
    {"bcr_stream_is_released", (DL_FUNC)&bcr_stream_is_released, 1},
    {"bcr_cache_new", (DL_FUNC)&bcr_cache_new, 2},
    {"bcr_cache_reader", (DL_FUNC)&bcr_cache_reader, 2},
    {"bcr_reader_drain", (DL_FUNC)&bcr_reader_drain, 1},
    {"bcr_cache_stats", (DL_FUNC)&bcr_cache_stats, 1},
    {"bcr_cache_close", (DL_FUNC)&bcr_cache_close, 1},
    {NULL, NULL, 0}};

void R_init_bcr(DllInfo *dll) {
  R_registerRoutines(dll, NULL, call_methods, NULL, NULL);
  R_useDynamicSymbols(dll, FALSE);
}
