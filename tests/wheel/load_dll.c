/* What cffi's ffi.dlopen(path) does on Windows, for tests/wheel/test_wheels.py (run under
 * wine): open the DLL by its full path, looking for its dependencies in the default folders
 * and its own folder only, then find each named function, as cffi's lib.<name> does.
 *
 *   load_dll.exe PATH NAME...     exit 0 when the DLL loads and every NAME is found
 */
#include <stdio.h>
#include <windows.h>

int wmain(int argc, wchar_t **argv) {
    if (argc < 3) {
        fwprintf(stderr, L"usage: load_dll PATH NAME...\n");
        return 2;
    }
    HMODULE lib = LoadLibraryExW(argv[1], NULL,
                                 LOAD_LIBRARY_SEARCH_DEFAULT_DIRS | LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR);
    if (lib == NULL) {
        fwprintf(stderr, L"cannot load %ls: error %lu\n", argv[1], GetLastError());
        return 1;
    }
    int missing = 0;
    for (int i = 2; i < argc; i++) {
        char name[256];
        if (WideCharToMultiByte(CP_UTF8, 0, argv[i], -1, name, sizeof name, NULL, NULL) == 0
            || GetProcAddress(lib, name) == NULL) {
            fwprintf(stderr, L"%ls: not found\n", argv[i]);
            missing++;
        }
    }
    printf("%d of %d functions found\n", argc - 2 - missing, argc - 2);
    return missing == 0 ? 0 : 1;
}
