#define BATCHCORDER_VERSION_MAJOR 0

#define BATCHCORDER_VERSION_MINOR 2

#define BATCHCORDER_VERSION_PATCH 0

typedef enum BcErrorKind {
  BC_ERROR_KIND_NONE = 0,
  BC_ERROR_KIND_READER_CAP = 1,
  BC_ERROR_KIND_OUT_OF_RANGE = 2,
} BcErrorKind;

typedef enum BcStatus {
  BC_OK = 0,
  BC_INVALID_ARGUMENT = 1,
  BC_CAPACITY = 2,
  BC_IO = 3,
  BC_UPSTREAM = 4,
  BC_EVICTED = 5,
  BC_CLOSED = 6,
  BC_INTERNAL = 7,
  BC_CORRUPT = 8,
} BcStatus;

typedef struct BcCache BcCache;

typedef struct BcOptions BcOptions;

typedef struct BcReaderOptions BcReaderOptions;

typedef struct ArrowSchema {
  const char *format;
  const char *name;
  const char *metadata;
  int64_t flags;
  int64_t n_children;
  struct ArrowSchema **children;
  struct ArrowSchema *dictionary;
  void *release;
  void *private_data;
} ArrowSchema;

typedef struct ArrowArray {
  int64_t length;
  int64_t null_count;
  int64_t offset;
  int64_t n_buffers;
  int64_t n_children;
  const void **buffers;
  struct ArrowArray **children;
  struct ArrowArray *dictionary;
  void *release;
  void *private_data;
} ArrowArray;

typedef struct ArrowArrayStream {
  void *get_schema;
  void *get_next;
  void *get_last_error;
  void *release;
  void *private_data;
} ArrowArrayStream;

typedef uint32_t BcValidation;

typedef struct BcStats {
  uint64_t batches_ingested;
  uint64_t rows_ingested;
  uint64_t memory_bytes;
  uint64_t disk_bytes;
  uint64_t batches_evicted;
  uint64_t segments_deleted;
  uint64_t readers_live;
  uint64_t readers_created;
  bool upstream_exhausted;
  uint64_t upstream_wait_ns;
  BcValidation validation;
} BcStats;

typedef uint32_t BcCastFailure;

typedef uint32_t BcWritePolicy;

typedef uint32_t BcCompression;

typedef struct BcPersisted {
  char id[33];
  uint64_t batches;
  uint64_t rows;
} BcPersisted;

typedef uint32_t BcVerify;

#define BC_VALIDATION_NONE 0

#define BC_VALIDATION_CHECKSUMS 1

#define BC_VALIDATION_FULL 2

#define BC_VALIDATION_NOTED 3

#define BC_CAST_FAILURE_ERROR 0

#define BC_CAST_FAILURE_NULL 1

#define BC_WRITE_ON_INSERTION 0

#define BC_WRITE_ON_EVICTION 1

#define BC_COMPRESSION_NONE 0

#define BC_COMPRESSION_LZ4 1

#define BC_COMPRESSION_ZSTD 2

#define BC_VERIFY_IF_MODIFIED 0

#define BC_VERIFY_ALWAYS 1

#define BC_VERIFY_NEVER 2

const char *bc_version(void);

const char *bc_last_error(void);

int bc_last_error_errno(void);

enum BcErrorKind bc_last_error_kind(void);

enum BcStatus bc_cache_new(struct ArrowArrayStream *upstream,
                           const struct BcOptions *opts,
                           struct BcCache **out);

enum BcStatus bc_cache_reader(struct BcCache *cache,
                              bool from_start,
                              const struct ArrowSchema *requested_schema,
                              struct ArrowArrayStream *out);

enum BcStatus bc_cache_check_schema(const struct BcCache *cache,
                                    const struct ArrowSchema *requested_schema);

enum BcStatus bc_cache_schema(const struct BcCache *cache, struct ArrowSchema *out);

enum BcStatus bc_cache_ingest_all(struct BcCache *cache, uint64_t *out_batches);

enum BcStatus bc_cache_ingest_next(struct BcCache *cache, bool *out_pulled);

uint64_t bc_cache_ingested_count(const struct BcCache *cache);

bool bc_cache_upstream_exhausted(const struct BcCache *cache);

enum BcStatus bc_cache_stats(const struct BcCache *cache, struct BcStats *out);

enum BcStatus bc_cache_close(struct BcCache *cache);

void bc_cache_free(struct BcCache *cache);

enum BcStatus bc_capsule_adopt_stream(void *capsule, struct ArrowArrayStream *stream);

void bc_capsule_release_stream(void *capsule);

enum BcStatus bc_reader_next(struct ArrowArrayStream *reader, struct ArrowArray *out);

enum BcStatus bc_reader_cast(struct ArrowArrayStream *reader,
                             const struct ArrowSchema *requested_schema);

enum BcStatus bc_reader_cast_with(struct ArrowArrayStream *reader,
                                  const struct ArrowSchema *requested_schema,
                                  BcCastFailure on_failure);

enum BcStatus bc_reader_position(struct ArrowArrayStream *reader, uint64_t *out);

enum BcStatus bc_reader_failure(struct ArrowArrayStream *reader);

enum BcStatus bc_reader_view(struct ArrowArrayStream *reader, struct ArrowArrayStream *out);

struct ArrowArrayStream *bc_stream_new(void);

void bc_stream_free(struct ArrowArrayStream *stream);

struct BcOptions *bc_options_new(void);

enum BcStatus bc_options_validate(const struct BcOptions *opts);

void bc_options_free(struct BcOptions *opts);

enum BcStatus bc_options_set_memory_capacity(struct BcOptions *opts, uint64_t bytes);

enum BcStatus bc_options_set_max_readers(struct BcOptions *opts, uint64_t max_readers);

enum BcStatus bc_options_set_disk(struct BcOptions *opts,
                                  const char *dir_utf8,
                                  uint64_t capacity_bytes);

enum BcStatus bc_options_set_write_policy(struct BcOptions *opts, BcWritePolicy policy);

enum BcStatus bc_options_set_compression(struct BcOptions *opts, BcCompression compression);

enum BcStatus bc_options_set_persist(struct BcOptions *opts, const char *path_utf8);

enum BcStatus bc_options_set_prefetch(struct BcOptions *opts, uint64_t batches);

enum BcStatus bc_options_set_segment_bytes(struct BcOptions *opts, uint64_t bytes);

enum BcStatus bc_cache_persist(struct BcCache *cache,
                               const char *path_utf8,
                               struct BcPersisted *out);

enum BcStatus bc_cache_open(const char *path_utf8,
                            BcVerify verify,
                            const struct BcOptions *opts,
                            struct BcPersisted *out_info,
                            struct BcCache **out);

enum BcStatus bc_cache_share(struct BcCache *cache, char **out_path, struct BcPersisted *out_info);

void bc_string_free(char *text);

enum BcStatus bc_cache_batch(struct BcCache *cache, uint64_t index, struct ArrowArray *out);

enum BcStatus bc_cache_take(struct BcCache *cache,
                            const uint64_t *rows,
                            size_t count,
                            struct ArrowArray *out);

struct BcReaderOptions *bc_reader_options_new(void);

void bc_reader_options_free(struct BcReaderOptions *opts);

enum BcStatus bc_reader_options_set_from_start(struct BcReaderOptions *opts, bool from_start);

enum BcStatus bc_reader_options_set_shuffle(struct BcReaderOptions *opts, uint64_t seed);

enum BcStatus bc_reader_options_set_shuffle_window(struct BcReaderOptions *opts, uint64_t window);

enum BcStatus bc_reader_options_set_shuffle_rows(struct BcReaderOptions *opts, bool shuffle_rows);

enum BcStatus bc_reader_options_set_shard(struct BcReaderOptions *opts,
                                          uint64_t index,
                                          uint64_t count);

enum BcStatus bc_cache_reader_with(struct BcCache *cache,
                                   const struct BcReaderOptions *opts,
                                   const struct ArrowSchema *requested_schema,
                                   struct ArrowArrayStream *out);

enum BcStatus bc_cache_check_reader_options(struct BcCache *cache,
                                            const struct BcReaderOptions *opts);
