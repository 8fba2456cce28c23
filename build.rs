//! Writes the two headers cbindgen makes of the sources: `target/batchcorder.h`, the
//! public header, and `target/header.h`, the cffi declarations maturin bundles.
//!
//! It comes from the same cbindgen.toml as include/batchcorder.h, minus everything
//! cffi's parser rejects: preprocessor lines, includes and comments.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let public = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml must parse");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate_dir.join("target"),
    };
    std::fs::create_dir_all(&target_dir).expect("target directory must be writable");
    // `make header` copies this one to include/batchcorder.h; `make check-header` diffs it.
    generate(
        &crate_dir,
        public.clone(),
        &target_dir.join("batchcorder.h"),
    );

    let mut config = public;
    config.header = None;
    config.include_guard = None;
    config.pragma_once = false;
    config.sys_includes.clear();
    config.includes.clear();
    config.no_includes = true;
    config.after_includes = None;
    config.trailer = None;
    config.cpp_compat = false;
    config.documentation = false;
    config.defines.clear();
    generate(&crate_dir, config, &target_dir.join("header.h"));

    link_args();
}

/// The shared library's SONAME carries the ABI major version (docs/c-users.md, "ABI
/// policy"), so `make install-c` can lay out libbatchcorder.so -> .so.MAJOR -> .so.X.Y.Z.
/// Only `bc_*` symbols are exported: rustc already hands the linker a version script
/// listing a cdylib's `#[no_mangle]` items alone, and tests/abi/check-symbols.sh checks it.
fn link_args() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbatchcorder.so.{major}");
    }
}

fn generate(crate_dir: &Path, config: cbindgen::Config, out: &Path) {
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen must understand the sources")
        .write_to_file(out);
}
