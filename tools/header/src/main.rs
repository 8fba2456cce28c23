//! `batchcorder-header OUT_DIR`: writes `OUT_DIR/batchcorder.h`, the public header, and
//! `OUT_DIR/batchcorder_cffi.h`, the declarations cffi reads, from the C crate's sources.
//!
//! Both come from cbindgen.toml; the cffi one leaves out everything cffi's parser rejects:
//! preprocessor lines, includes and comments. It also declares the Arrow structs'
//! callbacks as `void *`: Python never calls them, and cffi would otherwise build a call
//! interface for each on the first use of the struct in every process.

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
    let mut declarations = Vec::new();
    bindings(&crate_dir, config).write(&mut declarations);
    let declarations = String::from_utf8(declarations).expect("cbindgen writes UTF-8");
    std::fs::write(
        out.join("batchcorder_cffi.h"),
        callbacks_as_pointers(&declarations),
    )
    .expect("the output directory must be writable");
}

fn generate(crate_dir: &Path, config: cbindgen::Config, out: &Path) {
    bindings(crate_dir, config).write_to_file(out);
}

fn bindings(crate_dir: &Path, config: cbindgen::Config) -> cbindgen::Bindings {
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen must understand the sources")
}

/// Every struct field that is a function pointer, `  RET (*NAME)(ARGS);`, as `  void *NAME;`
/// (the same size and alignment).
fn callbacks_as_pointers(declarations: &str) -> String {
    let mut kept = String::with_capacity(declarations.len());
    for line in declarations.lines() {
        let field = line
            .strip_suffix(");")
            .filter(|_| line.starts_with("  "))
            .and_then(|rest| rest.split_once("(*"))
            .and_then(|(_, name)| name.split_once(")("))
            .map(|(name, _)| name);
        match field {
            Some(name) => kept.push_str(&format!("  void *{name};")),
            None => kept.push_str(line),
        }
        kept.push('\n');
    }
    kept
}
