/* Wine 8 (Debian 12's) has no bcryptprimitives.dll, whose ProcessPrng Rust's standard
 * library (1.78 on) imports on Windows for its random seeds: without it no Rust program,
 * and no program that loads batchcorder.dll, starts under that wine. This stand-in, for
 * the wine prefix's system32 only (mk/windows.mk, wine-shims), answers from bcrypt.dll's
 * system generator, as Windows's own ProcessPrng draws from the system's. Windows 10 and
 * later have the real one; nothing ships this. */
#include <windows.h>
#include <bcrypt.h>

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) < 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
