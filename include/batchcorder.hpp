// batchcorder.hpp: a header-only C++17 wrapper over the C API in batchcorder.h.
//
// Written by hand (batchcorder.h is generated); it adds no symbols of its own, so it links
// against the same libbatchcorder as C code does.
//
//   batchcorder::Cache cache(&upstream, batchcorder::Options().max_readers(2));
//   batchcorder::Reader reader = cache.reader();
//   while (auto batch = reader.next()) { ... batch->length ... }   // Array releases itself
//
// Ownership follows the C API and is made automatic:
// - `Cache` owns a BcCache* and frees it in its destructor (move-only). Readers it handed out
//   stay valid after it is gone.
// - `Reader` owns one ArrowArrayStream and releases it in its destructor (move-only).
// - `Array` and `Schema` own one ArrowArray / ArrowSchema and release them (move-only).
// - `Options` owns a BcOptions* (move-only); `Cache` copies it, so it may die right after.
//   `ReaderOptions` (a shuffle, a shard) owns a BcReaderOptions* the same way.
// - `Stream` owns an ArrowArrayStream that is not a reader (a view of one).
// - `Cache::share()` copies the library's string into a std::string and frees it.
// Errors throw `batchcorder::Error`, carrying the BcStatus, bc_last_error(),
// bc_last_error_errno() and bc_last_error_kind(), read on the thread whose call failed,
// right after the call. Decide from status() and kind(), not from what().
//
// Threading is the C API's: one `Cache` may be used from several threads at once (share it
// by reference or pointer); a `Reader` may move between threads but must not be used by two
// at the same time.
#ifndef BATCHCORDER_HPP
#define BATCHCORDER_HPP

#include <batchcorder.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace batchcorder {

/// The library's version string, "MAJOR.MINOR.PATCH" (the header's is in the
/// BATCHCORDER_VERSION_* macros).
inline std::string version() { return bc_version(); }

/// A failed `bc_*` call: its status, its message, its errno class and its kind.
class Error : public std::runtime_error {
 public:
  Error(BcStatus status, const std::string &what, int error_number = 0,
        BcErrorKind kind = BC_ERROR_KIND_NONE)
      : std::runtime_error(what), status_(status), errno_(error_number), kind_(kind) {}

  /// The BcStatus the call returned (never BC_OK).
  BcStatus status() const noexcept { return status_; }
  /// bc_last_error_errno() right after the failure: the upstream's own errno after
  /// BC_UPSTREAM, otherwise EINVAL, ENOMEM or EIO.
  int error_number() const noexcept { return errno_; }
  /// bc_last_error_kind() right after the failure: BC_ERROR_KIND_READER_CAP when a
  /// cache's max_readers readers all exist, BC_ERROR_KIND_OUT_OF_RANGE for a batch or row
  /// past the end, BC_ERROR_KIND_NONE when the status says all.
  BcErrorKind kind() const noexcept { return kind_; }

 private:
  BcStatus status_;
  int errno_;
  BcErrorKind kind_;
};

/// The name of a status, "BC_INVALID_ARGUMENT" and so on.
inline const char *status_name(BcStatus status) noexcept {
  switch (status) {
    case BC_OK: return "BC_OK";
    case BC_INVALID_ARGUMENT: return "BC_INVALID_ARGUMENT";
    case BC_CAPACITY: return "BC_CAPACITY";
    case BC_IO: return "BC_IO";
    case BC_UPSTREAM: return "BC_UPSTREAM";
    case BC_EVICTED: return "BC_EVICTED";
    case BC_CLOSED: return "BC_CLOSED";
    case BC_INTERNAL: return "BC_INTERNAL";
    case BC_CORRUPT: return "BC_CORRUPT";
  }
  return "BC_UNKNOWN";
}

/// The name of an error kind, "BC_ERROR_KIND_READER_CAP" and so on.
inline const char *kind_name(BcErrorKind kind) noexcept {
  switch (kind) {
    case BC_ERROR_KIND_NONE: return "BC_ERROR_KIND_NONE";
    case BC_ERROR_KIND_READER_CAP: return "BC_ERROR_KIND_READER_CAP";
    case BC_ERROR_KIND_OUT_OF_RANGE: return "BC_ERROR_KIND_OUT_OF_RANGE";
  }
  return "BC_ERROR_KIND_UNKNOWN";
}

namespace detail {
/// Throw for a failed status, with the thread's last error, which must be read before any
/// other bc_* call on this thread.
inline void check(BcStatus status, const char *call) {
  if (status == BC_OK) return;
  BcErrorKind kind = bc_last_error_kind();
  int error_number = bc_last_error_errno();
  std::string message = std::string(call) + ": " + bc_last_error() + " (" +
                        status_name(status);
  if (kind != BC_ERROR_KIND_NONE) message = message + ", " + kind_name(kind);
  throw Error(status, message + ")", error_number, kind);
}
}  // namespace detail

/// An owned Arrow C struct (`ArrowSchema` or `ArrowArray`), released when it dies.
/// Move-only. An `Array`'s buffers stay valid after the reader and the cache are gone.
template <typename Raw>
class Owned {
 public:
  /// An empty, released struct: every member zeroed, as a consumer may read any of them.
  Owned() noexcept : raw_{} {}
  /// Take over `raw` (its release is set to NULL).
  explicit Owned(Raw *raw) noexcept : raw_(*raw) { raw->release = nullptr; }
  Owned(Owned &&other) noexcept : raw_(other.raw_) { other.raw_.release = nullptr; }
  Owned &operator=(Owned &&other) noexcept {
    if (this != &other) {
      reset();
      raw_ = other.raw_;
      other.raw_.release = nullptr;
    }
    return *this;
  }
  Owned(const Owned &) = delete;
  Owned &operator=(const Owned &) = delete;
  ~Owned() { reset(); }

  bool valid() const noexcept { return raw_.release != nullptr; }
  const Raw *get() const noexcept { return &raw_; }
  /// The struct in place, for a C call that takes it by pointer (a stream's callbacks).
  Raw *get() noexcept { return &raw_; }
  const Raw *operator->() const noexcept { return &raw_; }
  /// Give up ownership: the returned struct is the caller's to release.
  Raw release() noexcept {
    Raw out = raw_;
    raw_ = Raw{};
    return out;
  }
  void reset() noexcept {
    if (raw_.release != nullptr) raw_.release(&raw_);
    raw_ = Raw{};
  }

 protected:
  Raw raw_;
};

/// An owned `struct ArrowSchema`.
using Schema = Owned<ArrowSchema>;
/// An owned `struct ArrowArray` (one batch).
using Array = Owned<ArrowArray>;

/// Options for a Cache or Cache::open: a fluent builder over BcOptions.
class Options {
 public:
  Options() : raw_(bc_options_new()) {
    if (raw_ == nullptr) throw Error(BC_CAPACITY, "bc_options_new: out of memory");
  }
  Options(Options &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  Options &operator=(Options &&other) noexcept {
    if (this != &other) {
      bc_options_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  Options(const Options &) = delete;
  Options &operator=(const Options &) = delete;
  ~Options() { bc_options_free(raw_); }

  Options &memory_capacity(std::uint64_t bytes) {
    detail::check(bc_options_set_memory_capacity(raw_, bytes), "bc_options_set_memory_capacity");
    return *this;
  }
  Options &max_readers(std::uint64_t readers) {
    detail::check(bc_options_set_max_readers(raw_, readers), "bc_options_set_max_readers");
    return *this;
  }
  Options &disk(const std::string &dir, std::uint64_t capacity_bytes) {
    detail::check(bc_options_set_disk(raw_, dir.c_str(), capacity_bytes), "bc_options_set_disk");
    return *this;
  }
  Options &write_policy(BcWritePolicy policy) {
    detail::check(bc_options_set_write_policy(raw_, policy), "bc_options_set_write_policy");
    return *this;
  }
  Options &compression(BcCompression compression) {
    detail::check(bc_options_set_compression(raw_, compression), "bc_options_set_compression");
    return *this;
  }
  Options &segment_bytes(std::uint64_t bytes) {
    detail::check(bc_options_set_segment_bytes(raw_, bytes), "bc_options_set_segment_bytes");
    return *this;
  }
  /// Read up to `batches` ahead of the fastest reader on a background thread.
  Options &prefetch(std::uint64_t batches) {
    detail::check(bc_options_set_prefetch(raw_, batches), "bc_options_set_prefetch");
    return *this;
  }
  /// Save the stream to the directory `path` as it is ingested (see bc_options_set_persist).
  Options &persist(const std::string &path) {
    detail::check(bc_options_set_persist(raw_, path.c_str()), "bc_options_set_persist");
    return *this;
  }
  /// Throw, naming the option, unless the options and the rules between them hold, as
  /// Cache's constructor will check them: before handing over a stream it cannot get back.
  const Options &validate() const {
    detail::check(bc_options_validate(raw_), "bc_options_validate");
    return *this;
  }

  const BcOptions *get() const noexcept { return raw_; }

 private:
  BcOptions *raw_;
};

/// How Cache::reader(const ReaderOptions &) makes a reader: a fluent builder over
/// BcReaderOptions (move-only; the Cache copies it). Each setter throws Error naming the
/// argument that is wrong.
class ReaderOptions {
 public:
  ReaderOptions() : raw_(bc_reader_options_new()) {
    if (raw_ == nullptr) throw Error(BC_CAPACITY, "bc_reader_options_new: out of memory");
  }
  ReaderOptions(ReaderOptions &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  ReaderOptions &operator=(ReaderOptions &&other) noexcept {
    if (this != &other) {
      bc_reader_options_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  ReaderOptions(const ReaderOptions &) = delete;
  ReaderOptions &operator=(const ReaderOptions &) = delete;
  ~ReaderOptions() { bc_reader_options_free(raw_); }

  ReaderOptions &from_start(bool from_start) {
    detail::check(bc_reader_options_set_from_start(raw_, from_start), "bc_reader_options_set_from_start");
    return *this;
  }
  /// A seeded random order (the same in any process, for a given library version).
  ReaderOptions &shuffle(std::uint64_t seed) {
    detail::check(bc_reader_options_set_shuffle(raw_, seed), "bc_reader_options_set_shuffle");
    return *this;
  }
  /// Shuffle through a window of `window` batches rather than the whole stream.
  ReaderOptions &shuffle_window(std::uint64_t window) {
    detail::check(bc_reader_options_set_shuffle_window(raw_, window), "bc_reader_options_set_shuffle_window");
    return *this;
  }
  /// Also permute the rows inside each batch.
  ReaderOptions &shuffle_rows(bool shuffle_rows) {
    detail::check(bc_reader_options_set_shuffle_rows(raw_, shuffle_rows), "bc_reader_options_set_shuffle_rows");
    return *this;
  }
  /// Shard `index` of `count`: every count-th batch of the order, from index on.
  ReaderOptions &shard(std::uint64_t index, std::uint64_t count) {
    detail::check(bc_reader_options_set_shard(raw_, index, count), "bc_reader_options_set_shard");
    return *this;
  }

  const BcReaderOptions *get() const noexcept { return raw_; }

 private:
  BcReaderOptions *raw_;
};

/// An owned `struct ArrowArrayStream` that is not a reader: a view of one (Reader::view).
using Stream = Owned<ArrowArrayStream>;

/// One independent reader of a Cache: an owned ArrowArrayStream, released in the
/// destructor. Move-only. It may outlive the Cache it came from. get() gives the stream
/// to read in place; release() hands it to a consumer that releases it (DuckDB, pyarrow,
/// nanoarrow...).
class Reader : public Owned<ArrowArrayStream> {
 public:
  /// An empty reader (valid() is false); assign one from Cache::reader(). A stream made
  /// by bc_cache_reader is taken over with Reader(&stream) (its release is set to NULL).
  using Owned::Owned;

  /// The next batch, or std::nullopt at the end of the stream. Throws Error on failure.
  std::optional<Array> next() {
    ArrowArray out;
    detail::check(bc_reader_next(&raw_, &out), "bc_reader_next");
    if (out.release == nullptr) return std::nullopt;
    return Array(&out);
  }

  /// Cast every later batch to `requested_schema` (only read), failing the read of a
  /// batch holding a value that does not convert; throws, leaving the reader as it was,
  /// if the cast is impossible.
  void cast(const ArrowSchema *requested_schema) {
    detail::check(bc_reader_cast(&raw_, requested_schema), "bc_reader_cast");
  }
  /// The same, with `on_failure` (BC_CAST_FAILURE_ERROR or BC_CAST_FAILURE_NULL) saying
  /// what a value that does not convert does.
  void cast(const ArrowSchema *requested_schema, BcCastFailure on_failure) {
    detail::check(bc_reader_cast_with(&raw_, requested_schema, on_failure), "bc_reader_cast_with");
  }

  /// A second stream reading through this reader (bc_reader_view), for an Arrow library
  /// that takes over the streams it imports while this Reader is still used. Reads
  /// through either advance one position. The Stream must be released (or never called
  /// again) before this Reader is released or destroyed.
  Stream view() {
    ArrowArrayStream out;
    detail::check(bc_reader_view(&raw_, &out), "bc_reader_view");
    return Stream(&out);
  }

  /// The index of the batch next() returns next; for a shuffled or sharded reader, the
  /// count of batches it has returned.
  std::uint64_t position() {
    std::uint64_t out = 0;
    detail::check(bc_reader_position(&raw_, &out), "bc_reader_position");
    return out;
  }

  /// The stream's schema (the requested one, if the reader was made with one). Throws
  /// Error with the failure's own status (BC_CLOSED, BC_INTERNAL...).
  Schema schema() {
    if (!valid()) throw Error(BC_INVALID_ARGUMENT, "Reader::schema: the reader is empty or released", EINVAL);
    ArrowSchema out;
    if (raw_.get_schema(&raw_, &out) != 0) {
      BcStatus status = bc_reader_failure(&raw_);
      detail::check(status == BC_OK ? BC_INTERNAL : status, "get_schema");
    }
    return Schema(&out);
  }
};

/// A cache over one upstream Arrow stream. Move-only; frees the handle in its destructor.
/// All member functions are thread-safe: share one Cache between threads by reference.
class Cache {
 public:
  /// Take `upstream` by move: on success its release is NULL and the cache owns it. On
  /// failure this throws and the caller still owns `upstream`, untouched.
  explicit Cache(ArrowArrayStream *upstream) : Cache(upstream, nullptr) {}
  Cache(ArrowArrayStream *upstream, const Options &options) : Cache(upstream, options.get()) {}
  Cache(Cache &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  Cache &operator=(Cache &&other) noexcept {
    if (this != &other) {
      bc_cache_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  Cache(const Cache &) = delete;
  Cache &operator=(const Cache &) = delete;
  ~Cache() { bc_cache_free(raw_); }

  /// A new independent reader, from the first batch or (from_start=false) from the
  /// ingestion frontier; each batch is cast to `requested_schema` when one is given.
  Reader reader(bool from_start = true, const ArrowSchema *requested_schema = nullptr) {
    ArrowArrayStream out;
    detail::check(bc_cache_reader(raw_, from_start, requested_schema, &out), "bc_cache_reader");
    return Reader(&out);
  }

  /// A new reader ordered as `options` say (a shuffle, a shard; bc_cache_reader_with),
  /// cast to `requested_schema` when one is given.
  Reader reader(const ReaderOptions &options, const ArrowSchema *requested_schema = nullptr) {
    ArrowArrayStream out;
    detail::check(bc_cache_reader_with(raw_, options.get(), requested_schema, &out), "bc_cache_reader_with");
    return Reader(&out);
  }

  /// The stream's schema.
  Schema schema() const {
    ArrowSchema out;
    detail::check(bc_cache_schema(raw_, &out), "bc_cache_schema");
    return Schema(&out);
  }

  /// Throw unless `requested_schema` is one reader() can cast the batches to.
  void check_schema(const ArrowSchema *requested_schema) const {
    detail::check(bc_cache_check_schema(raw_, requested_schema), "bc_cache_check_schema");
  }

  /// Throw unless reader(options) would take `options` (the same error), without making
  /// a reader or counting toward max_readers (bc_cache_check_reader_options).
  void check_reader_options(const ReaderOptions &options) const {
    detail::check(bc_cache_check_reader_options(raw_, options.get()), "bc_cache_check_reader_options");
  }

  /// Pull one more batch in; false once the upstream is exhausted. For progress reports.
  bool ingest_next() {
    bool pulled = false;
    detail::check(bc_cache_ingest_next(raw_, &pulled), "bc_cache_ingest_next");
    return pulled;
  }

  /// Pull the whole upstream in; returns the total batch count.
  std::uint64_t ingest_all() {
    std::uint64_t batches = 0;
    detail::check(bc_cache_ingest_all(raw_, &batches), "bc_cache_ingest_all");
    return batches;
  }

  std::uint64_t ingested_count() const noexcept { return bc_cache_ingested_count(raw_); }
  bool upstream_exhausted() const noexcept { return bc_cache_upstream_exhausted(raw_); }

  BcStats stats() const {
    BcStats out{};
    detail::check(bc_cache_stats(raw_, &out), "bc_cache_stats");
    return out;
  }

  /// Batch `index` of the stream (bc_cache_batch), pulling the upstream up to it; schema()
  /// is its schema. Not a reader: max_readers does not count it. Throws Error: kind
  /// BC_ERROR_KIND_OUT_OF_RANGE past the end, status BC_EVICTED for a batch eviction
  /// dropped.
  Array batch(std::uint64_t index) {
    ArrowArray out;
    detail::check(bc_cache_batch(raw_, index, &out), "bc_cache_batch");
    return Array(&out);
  }

  /// The stream's rows at `rows` (positions over the whole stream), in that order, as one
  /// array of schema() (bc_cache_take). Throws as batch() does.
  Array take(const std::vector<std::uint64_t> &rows) {
    ArrowArray out;
    detail::check(bc_cache_take(raw_, rows.data(), rows.size(), &out), "bc_cache_take");
    return Array(&out);
  }

  /// Drop the cached data and the upstream now; readers then fail with BC_CLOSED.
  void close() { detail::check(bc_cache_close(raw_), "bc_cache_close"); }

  /// Read the rest of the upstream and save the whole stream to the directory `path`
  /// (see bc_cache_persist); returns the manifest's record.
  BcPersisted persist(const std::string &path) {
    BcPersisted out{};
    detail::check(bc_cache_persist(raw_, path.c_str(), &out), "bc_cache_persist");
    return out;
  }

  /// Open the cache persisted at `path`, read-only, with no reader cap (see bc_cache_open).
  static Cache open(const std::string &path, BcVerify verify = BC_VERIFY_IF_MODIFIED) {
    return open_with(path, verify, nullptr);
  }
  /// The same with `options`, of which bc_cache_open uses max_readers.
  static Cache open(const std::string &path, const Options &options,
                    BcVerify verify = BC_VERIFY_IF_MODIFIED) {
    return open_with(path, verify, options.get());
  }

  /// A persisted copy's directory and manifest record, as share() returns them.
  struct Shared {
    std::string path;
    BcPersisted info;
  };
  /// The directory another process can open() this cache from (see bc_cache_share).
  Shared share() {
    char *path = nullptr;
    BcPersisted info{};
    detail::check(bc_cache_share(raw_, &path, &info), "bc_cache_share");
    // Owned before the copy, which may throw.
    std::unique_ptr<char, void (*)(char *)> owned(path, bc_string_free);
    return Shared{std::string(owned.get()), info};
  }

  BcCache *get() const noexcept { return raw_; }

 private:
  Cache(ArrowArrayStream *upstream, const BcOptions *options) : raw_(nullptr) {
    detail::check(bc_cache_new(upstream, options, &raw_), "bc_cache_new");
  }
  explicit Cache(BcCache *raw) noexcept : raw_(raw) {}
  static Cache open_with(const std::string &path, BcVerify verify, const BcOptions *options) {
    BcCache *raw = nullptr;
    detail::check(bc_cache_open(path.c_str(), verify, options, nullptr, &raw), "bc_cache_open");
    return Cache(raw);
  }

  BcCache *raw_;
};

}  // namespace batchcorder

#endif  // BATCHCORDER_HPP
