// The header compiles as C++17, twice (include guard), beside the C++ standard library.
#include <cstdio>

#include "batchcorder.h"
#include "batchcorder.h"

int main() {
  ArrowArrayStream stream{};
  BcStatus status = bc_cache_reader(nullptr, true, nullptr, &stream);
  std::printf("%s %d\n", bc_version(), static_cast<int>(status == BC_INVALID_ARGUMENT));
  return status == BC_INVALID_ARGUMENT ? 0 : 1;
}
