// The C++ wrapper's own behaviour: empty objects are zeroed, and failures keep their status.
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "batchcorder.hpp"
#include "check.h"
#include "producer.h"

template <typename F>
static BcStatus status_of(F &&call) {
  try {
    call();
  } catch (const batchcorder::Error &err) {
    return err.status();
  }
  return BC_OK;
}

int main() {
  batchcorder::Reader empty;
  ArrowArrayStream zeroed;
  std::memset(&zeroed, 0, sizeof zeroed);
  CHECK(std::memcmp(empty.get(), &zeroed, sizeof zeroed) == 0, "an empty Reader is all zeros");
  CHECK(status_of([&] { empty.schema(); }) == BC_INVALID_ARGUMENT, "schema() of an empty Reader throws");
  batchcorder::Array array;
  CHECK(array.get()->n_children == 0 && array.get()->children == nullptr, "an empty Array is zeroed");

  ArrowArrayStream up = make_producer(3, 10, -1, 0, nullptr);
  batchcorder::Cache cache(&up);
  batchcorder::Reader reader = cache.reader();
  CHECK(reader.schema()->n_children == 2, "schema() of a live reader");
  ArrowArrayStream handed = reader.release();
  CHECK(!reader.valid() && reader.get()->get_next == nullptr, "release() leaves a zeroed Reader");
  batchcorder::Reader again(&handed);
  int batches = 0;
  while (again.next()) batches++;
  CHECK(batches == 3, "a handed-back reader reads every batch");

  // get_schema fails once the cache is closed: schema() reports the reader's own status,
  // which only the library knows (the callback returns an errno).
  cache.close();
  CHECK(status_of([&] { again.schema(); }) == BC_CLOSED, "schema() of a closed cache's reader is BC_CLOSED");
  batchcorder::Reader late(&handed);  // handed is released: an empty reader
  CHECK(!late.valid(), "taking over a released stream gives an empty reader");
  CHECK(status_of([&] { cache.reader(); }) == BC_CLOSED, "a closed cache refuses readers with BC_CLOSED");

  // Persist and open: the saved stream replays from the opened cache; a directory that is
  // not a save throws BC_CORRUPT, named by status_name.
  char dir[] = "/tmp/bc-cpp-persist-XXXXXX";
  CHECK(mkdtemp(dir) != nullptr, "temp dir");
  std::string path = std::string(dir) + "/saved";
  ArrowArrayStream source = make_producer(4, 10, -1, 0, nullptr);
  batchcorder::Cache saving(&source);
  BcPersisted saved = saving.persist(path);
  CHECK(saved.batches == 4 && saved.rows == 40, "persist() returns the manifest's counts");
  batchcorder::Cache opened = batchcorder::Cache::open(path);
  batchcorder::Reader replay = opened.reader();
  batches = 0;
  while (replay.next()) batches++;
  CHECK(batches == 4, "an opened cache replays every batch");
  try {
    batchcorder::Cache::open(dir);
    CHECK(false, "opening a directory that is not a save throws");
  } catch (const batchcorder::Error &err) {
    CHECK(err.status() == BC_CORRUPT, "with BC_CORRUPT");
    CHECK(std::strstr(err.what(), "BC_CORRUPT") != nullptr, "named in the message");
  }
  for (const char *name : {"manifest.json", "checksums.xxh3", "data.arrow"}) {
    std::remove((path + "/" + name).c_str());
  }
  rmdir(path.c_str());
  CHECK(rmdir(dir) == 0, "only the save was left");

  std::printf("cpp wrapper: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
