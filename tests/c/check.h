/* The checks of the C and C++ tests: count passes and failures, print each failure with
 * the library's last error. On Windows, a check that cannot hold there is counted apart
 * (CHECK_UNIX), and the summary says how many. */
#ifndef BC_TEST_CHECK_H
#define BC_TEST_CHECK_H

#include <stdio.h>

#include "batchcorder.h"

static int passed, failed, unix_only;

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

/* A check that holds only on POSIX systems, `why` saying why: on Windows it is neither
 * evaluated nor counted as passed, but counted as Unix-only and printed. */
#ifdef _WIN32
#define CHECK_UNIX(cond, name, why)                          \
  do {                                                       \
    unix_only++;                                             \
    printf("unix-only - %s (line %d): %s\n", name, __LINE__, why); \
  } while (0)
#else
#define CHECK_UNIX(cond, name, why) CHECK(cond, name)
#endif

/* The last line of a test program, and its exit status. */
static inline int summary(const char *program) {
  printf("%s: %d passed, %d failed", program, passed, failed);
  if (unix_only > 0) printf(", %d Unix-only (not run on Windows)", unix_only);
  printf("\n");
  return failed == 0 ? 0 : 1;
}

#endif
