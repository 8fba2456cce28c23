// Cache a single-use Arrow stream once, then replay it from two readers on two threads,
// through the header-only C++17 wrapper <batchcorder.hpp>.
//
// The upstream is a small hand-written Arrow C Stream producer: struct batches of two
// columns, `id` (int64) and `value` (float64, id / 2).
//
// Build against an installed libbatchcorder, with pkg-config:
//   c++ -std=c++17 -pthread replay.cpp $(pkg-config --cflags --libs batchcorder) -o replay
// or with CMake: see CMakeLists.txt (find_package(batchcorder) -> batchcorder::batchcorder).
#include <batchcorder.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------
// The upstream: a minimal Arrow C Stream producer. Every exported struct owns its memory
// through private_data, so each one can be released on its own, as the spec requires.
// ---------------------------------------------------------------------------------------

constexpr std::int64_t kBatchRows[] = {1000, 2500, 500, 4000};
constexpr std::int64_t kBatches = sizeof kBatchRows / sizeof kBatchRows[0];

struct ProducerReport {
  int get_next_calls = 0;
  bool released = false;
};

struct SchemaHolder {
  ArrowSchema children[2];
  ArrowSchema *child_ptrs[2] = {&children[0], &children[1]};
};

void release_leaf_schema(ArrowSchema *schema) { schema->release = nullptr; }

void release_struct_schema(ArrowSchema *schema) {
  auto *holder = static_cast<SchemaHolder *>(schema->private_data);
  for (ArrowSchema *child : holder->child_ptrs)
    if (child->release != nullptr) child->release(child);
  delete holder;
  schema->release = nullptr;
}

template <typename T>
struct ColumnHolder {
  std::vector<T> values;
  const void *buffers[2] = {nullptr, nullptr};  // no validity bitmap: no nulls
};

template <typename T>
ArrowArray *column(std::vector<T> values) {
  auto holder = std::make_unique<ColumnHolder<T>>();
  holder->values = std::move(values);
  holder->buffers[1] = holder->values.data();
  auto *array = new ArrowArray{};
  array->length = static_cast<std::int64_t>(holder->values.size());
  array->n_buffers = 2;
  array->buffers = holder->buffers;
  array->release = [](ArrowArray *a) {
    delete static_cast<ColumnHolder<T> *>(a->private_data);
    a->release = nullptr;  // the parent deletes the struct itself
  };
  array->private_data = holder.release();
  return array;
}

struct BatchHolder {
  ArrowArray *children[2] = {nullptr, nullptr};
  const void *buffers[1] = {nullptr};
};

void release_batch(ArrowArray *array) {
  auto *holder = static_cast<BatchHolder *>(array->private_data);
  for (ArrowArray *child : holder->children) {
    if (child == nullptr) continue;
    if (child->release != nullptr) child->release(child);
    delete child;
  }
  delete holder;
  array->release = nullptr;
}

struct Producer {
  std::int64_t next_batch = 0;
  std::int64_t next_id = 0;
  ProducerReport *report;

  static int get_schema(ArrowArrayStream *, ArrowSchema *out) noexcept {
    auto *holder = new (std::nothrow) SchemaHolder{};
    if (holder == nullptr) return ENOMEM;
    holder->children[0] = ArrowSchema{"l", "id", nullptr, 0, 0, nullptr, nullptr,
                                      release_leaf_schema, nullptr};
    holder->children[1] = ArrowSchema{"g", "value", nullptr, 0, 0, nullptr, nullptr,
                                      release_leaf_schema, nullptr};
    *out = ArrowSchema{"+s", "", nullptr, 0, 2, holder->child_ptrs, nullptr,
                       release_struct_schema, holder};
    return 0;
  }

  static int get_next(ArrowArrayStream *stream, ArrowArray *out) noexcept {
    auto *self = static_cast<Producer *>(stream->private_data);
    self->report->get_next_calls++;
    if (self->next_batch == kBatches) {
      *out = ArrowArray{};  // the end: a released array
      return 0;
    }
    try {
      const std::int64_t rows = kBatchRows[self->next_batch];
      std::vector<std::int64_t> ids(static_cast<std::size_t>(rows));
      std::vector<double> values(static_cast<std::size_t>(rows));
      for (std::int64_t i = 0; i < rows; i++) {
        ids[static_cast<std::size_t>(i)] = self->next_id + i;
        values[static_cast<std::size_t>(i)] = static_cast<double>(self->next_id + i) / 2.0;
      }
      auto holder = std::make_unique<BatchHolder>();
      ArrowArray batch{};
      batch.length = rows;
      batch.n_buffers = 1;
      batch.buffers = holder->buffers;
      batch.n_children = 2;
      batch.children = holder->children;
      batch.release = release_batch;
      holder->children[0] = column(std::move(ids));
      holder->children[1] = column(std::move(values));
      batch.private_data = holder.release();
      self->next_batch++;
      self->next_id += rows;
      *out = batch;  // the consumer releases it
      return 0;
    } catch (const std::bad_alloc &) {
      return ENOMEM;
    }
  }

  static const char *get_last_error(ArrowArrayStream *) noexcept { return nullptr; }

  static void release(ArrowArrayStream *stream) noexcept {
    auto *self = static_cast<Producer *>(stream->private_data);
    self->report->released = true;
    delete self;
    stream->release = nullptr;
  }

  static ArrowArrayStream make(ProducerReport *report) {
    return ArrowArrayStream{get_schema, get_next, get_last_error, release,
                            new Producer{0, 0, report}};
  }
};

// ---------------------------------------------------------------------------------------
// The consumers.
// ---------------------------------------------------------------------------------------

struct Totals {
  std::int64_t batches = 0, rows = 0, sum_id = 0;
  double sum_value = 0.0;
  std::string error;
};

// Drains one reader; the Reader is moved in and released when this returns.
void replay(batchcorder::Reader reader, Totals *totals) {
  try {
    while (std::optional<batchcorder::Array> batch = reader.next()) {
      const ArrowArray *ids_col = (*batch)->children[0];
      const ArrowArray *values_col = (*batch)->children[1];
      const auto *ids = static_cast<const std::int64_t *>(ids_col->buffers[1]) +
                        (*batch)->offset + ids_col->offset;
      const auto *values = static_cast<const double *>(values_col->buffers[1]) +
                           (*batch)->offset + values_col->offset;
      for (std::int64_t i = 0; i < (*batch)->length; i++) {
        totals->sum_id += ids[i];
        totals->sum_value += values[i];
      }
      totals->batches++;
      totals->rows += (*batch)->length;
    }  // each Array releases itself here
  } catch (const batchcorder::Error &err) {
    totals->error = err.what();
  }
}

}  // namespace

int main() {
  std::printf("libbatchcorder %s (header %d.%d.%d)\n", batchcorder::version().c_str(),
              BATCHCORDER_VERSION_MAJOR, BATCHCORDER_VERSION_MINOR, BATCHCORDER_VERSION_PATCH);

  // Failures throw batchcorder::Error, carrying the status and bc_last_error().
  try {
    batchcorder::Options().max_readers(0);
  } catch (const batchcorder::Error &err) {
    std::printf("expected error: %s\n", err.what());
    if (err.status() != BC_INVALID_ARGUMENT) return 1;
  }

  ProducerReport report;
  ArrowArrayStream upstream = Producer::make(&report);
  bool ok = true;
  {
    std::optional<batchcorder::Cache> cache;
    try {
      cache.emplace(&upstream, batchcorder::Options().max_readers(2));  // moves upstream
    } catch (const batchcorder::Error &err) {
      std::fprintf(stderr, "%s\n", err.what());
      upstream.release(&upstream);  // on failure we still own it
      return 1;
    }

    batchcorder::Schema schema = cache->schema();
    std::printf("schema:");
    for (std::int64_t i = 0; i < schema->n_children; i++)
      std::printf(" %s (%s)", schema->children[i]->name, schema->children[i]->format);
    std::printf("\n");

    Totals totals[2];
    std::thread threads[2];
    for (int i = 0; i < 2; i++) threads[i] = std::thread(replay, cache->reader(), &totals[i]);
    for (std::thread &thread : threads) thread.join();

    std::int64_t total_rows = 0;
    for (std::int64_t rows : kBatchRows) total_rows += rows;
    const std::int64_t want_sum_id = total_rows * (total_rows - 1) / 2;
    const double want_sum_value = static_cast<double>(want_sum_id) / 2.0;
    for (int i = 0; i < 2; i++) {
      std::printf("reader %d: %lld batches, %lld rows, sum(id) = %lld, sum(value) = %.1f\n", i,
                  static_cast<long long>(totals[i].batches),
                  static_cast<long long>(totals[i].rows),
                  static_cast<long long>(totals[i].sum_id), totals[i].sum_value);
      if (!totals[i].error.empty()) std::fprintf(stderr, "reader %d: %s\n", i, totals[i].error.c_str());
      ok = ok && totals[i].error.empty() && totals[i].batches == kBatches &&
           totals[i].rows == total_rows && totals[i].sum_id == want_sum_id &&
           totals[i].sum_value == want_sum_value;
    }

    // Both readers passed every batch, so max_readers(2) let the cache evict them all: a
    // third reader from the start is refused, with a status and a message saying why.
    try {
      cache->reader();
      ok = false;
    } catch (const batchcorder::Error &err) {
      std::printf("third reader refused: %s\n", err.what());
    }

    BcStats stats = cache->stats();
    std::printf("cache: %llu batches, %llu rows ingested; %llu readers created; %llu evicted\n",
                static_cast<unsigned long long>(stats.batches_ingested),
                static_cast<unsigned long long>(stats.rows_ingested),
                static_cast<unsigned long long>(stats.readers_created),
                static_cast<unsigned long long>(stats.batches_evicted));
    ok = ok && stats.batches_ingested == static_cast<std::uint64_t>(kBatches) &&
         stats.rows_ingested == static_cast<std::uint64_t>(total_rows);
  }  // ~Cache frees the handle, which releases the upstream

  std::printf("upstream: %d get_next calls for %lld batches, released: %s\n",
              report.get_next_calls, static_cast<long long>(kBatches),
              report.released ? "yes" : "no");
  ok = ok && report.get_next_calls == kBatches + 1 && report.released;
  std::printf("%s\n", ok ? "OK: one upstream pass, two full replays" : "FAILED");
  return ok ? 0 : 1;
}
