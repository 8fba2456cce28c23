/* The checks of the C and C++ tests: count passes and failures, print each failure with
 * the library's last error. */
#ifndef BC_TEST_CHECK_H
#define BC_TEST_CHECK_H

#include <stdio.h>

#include "batchcorder.h"

static int passed, failed;

#define CHECK(cond, name)                                           \
  do {                                                              \
    if (cond) {                                                     \
      passed++;                                                     \
    } else {                                                        \
      failed++;                                                     \
      printf("not ok - %s (line %d): %s\n", name, __LINE__, #cond); \
      printf("  last error: %s\n", bc_last_error());                \
    }                                                               \
  } while (0)

#endif
