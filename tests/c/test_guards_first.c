/* Another header's Arrow structs first, then ours: ours must skip its own copies. */
#include <stddef.h>
#include "guards_abi.h"
#include "batchcorder.h"

int main(void) {
  struct ArrowArrayStream stream = {0};
  return bc_cache_reader(NULL, 1, NULL, &stream) == BC_INVALID_ARGUMENT ? 0 : 1;
}
