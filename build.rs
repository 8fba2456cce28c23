//! Hands maturin the committed cffi declarations and gives the shared library its SONAME
//! (Linux) or install name (macOS).
//!
//! maturin's cffi build reads `target/header.h` when it exists instead of making its own;
//! ours is `include/batchcorder_cffi.h`, written by `make header` (tools/header) and checked
//! against the sources by `make check-header`, so no build compiles cbindgen.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=include/batchcorder_cffi.h");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate_dir.join("target"),
    };
    std::fs::create_dir_all(&target_dir).expect("target directory must be writable");
    std::fs::copy(
        crate_dir.join("include/batchcorder_cffi.h"),
        target_dir.join("header.h"),
    )
    .expect("include/batchcorder_cffi.h must exist (make header writes it)");
    link_args();
}

/// The shared library's SONAME carries the ABI major version (docs/c-users.md, "ABI
/// policy"), so `make install` can lay out libbatchcorder.so -> .so.MAJOR -> .so.X.Y.Z.
/// On macOS the install name does the same, `@rpath/libbatchcorder.MAJOR.dylib`, rather
/// than the build folder's path the linker would record. The macOS wheels built on Linux
/// link with rust-lld directly (mk/wheels.mk), which takes the linker's own arguments;
/// a C compiler driver (the native build) takes them after `-Wl,`.
/// Only `bc_*` symbols are exported: rustc already hands the linker a version script (an
/// exported-symbols list on macOS) listing a cdylib's `#[no_mangle]` items alone, and
/// tests/abi/check-symbols.sh and tests/wheel/test_wheels.py check it.
fn link_args() {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbatchcorder.so.{major}");
    } else if os == "macos" {
        let install_name = format!("@rpath/libbatchcorder.{major}.dylib");
        let linker = std::env::var_os("RUSTC_LINKER").map(PathBuf::from);
        let stem = linker
            .as_deref()
            .and_then(|l| l.file_stem())
            .and_then(|s| s.to_str());
        if matches!(stem, Some("ld64" | "ld64.lld" | "rust-lld" | "ld")) {
            println!("cargo:rustc-cdylib-link-arg=-install_name");
            println!("cargo:rustc-cdylib-link-arg={install_name}");
        } else {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-install_name,{install_name}");
        }
    }
}
