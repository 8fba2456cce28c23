/* What the C and C++ tests ask of the OS beyond the C library, the same on Linux and on
 * Windows (mingw-w64, run under wine): a fresh temporary folder, a new folder, a pause. */
#ifndef BC_TEST_PORTABLE_H
#define BC_TEST_PORTABLE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef _WIN32
#include <direct.h>
#include <process.h>
#include <windows.h>
#else
#include <sys/stat.h>
#include <time.h>
#endif

/* The separator of the paths the tests build: the library gives a save's path back as it
 * got it, and on Windows that is with backslashes (std::path::absolute's form). */
#ifdef _WIN32
#define SEP "\\"
#else
#define SEP "/"
#endif

/* A new folder: mode 0700 on POSIX; on Windows, the folder's default ACL. 0 on success. */
static inline int make_dir(const char *path) {
#ifdef _WIN32
  return _mkdir(path);
#else
  return mkdir(path, 0700);
#endif
}

/* A fresh folder in the system's temporary folder ($TMPDIR or /tmp; %TEMP% on Windows),
 * named `prefix` and six random characters, its path written into `out`. 0 on success. */
static inline int make_temp_dir(const char *prefix, char *out, size_t size) {
#ifdef _WIN32
  const char *base = getenv("TEMP");
  if (base == NULL) base = ".";
  static const char chars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  srand((unsigned)GetTickCount() ^ ((unsigned)_getpid() << 16));
  for (int attempt = 0; attempt < 100; attempt++) {
    char suffix[7];
    for (int i = 0; i < 6; i++) suffix[i] = chars[rand() % (int)(sizeof chars - 1)];
    suffix[6] = '\0';
    if (snprintf(out, size, "%s\\%s%s", base, prefix, suffix) >= (int)size) return -1;
    if (_mkdir(out) == 0) return 0;
    if (errno != EEXIST) return -1;
  }
  return -1;
#else
  const char *base = getenv("TMPDIR");
  if (base == NULL || *base == '\0') base = "/tmp";
  if (snprintf(out, size, "%s/%sXXXXXX", base, prefix) >= (int)size) return -1;
  return mkdtemp(out) != NULL ? 0 : -1;
#endif
}

/* Sleep about `ms` milliseconds. */
static inline void sleep_ms(unsigned ms) {
#ifdef _WIN32
  Sleep(ms);
#else
  struct timespec pause = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  nanosleep(&pause, NULL);
#endif
}

#endif
