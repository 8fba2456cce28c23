/* Ours first, then another header's guarded Arrow structs: theirs must be skipped. */
#include <stddef.h>

#include "batchcorder.h"
#include "guards_abi.h"

#ifdef ARROW_FLAG_NULLABLE
#error "the other header's guarded block was compiled: batchcorder.h did not set the guards"
#endif

int main(void) {
  struct ArrowSchema schema = {0};
  return bc_cache_schema(NULL, &schema) == BC_INVALID_ARGUMENT ? 0 : 1;
}
