//! `batchcorder-header OUT_DIR`: writes `OUT_DIR/batchcorder.h`, the public header, and
//! `OUT_DIR/batchcorder_cffi.h`, the declarations cffi reads, from the C crate's sources.
//!
//! Both come from cbindgen.toml; the cffi one leaves out everything cffi's parser rejects:
//! preprocessor lines, includes and comments.

use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: batchcorder-header OUT_DIR"),
    );
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let public = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml must parse");
    std::fs::create_dir_all(&out).expect("the output directory must be writable");
    generate(&crate_dir, public.clone(), &out.join("batchcorder.h"));

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
    generate(&crate_dir, config, &out.join("batchcorder_cffi.h"));
}

fn generate(crate_dir: &Path, config: cbindgen::Config, out: &Path) {
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen must understand the sources")
        .write_to_file(out);
}
