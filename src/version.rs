//! The version macros of the public header.
//!
//! cbindgen turns only literal constants into `#define`s (and cffi only parses plain
//! integer literals), so the numbers are written out here and checked at compile time
//! against Cargo.toml: bumping the package version without updating them fails the build.

/// Major version of the library; the C ABI (and the SONAME `libbatchcorder.so.MAJOR`)
/// changes incompatibly only when it changes.
pub const BATCHCORDER_VERSION_MAJOR: u32 = 0;

/// Minor version of the library: releases that only add to the C ABI.
pub const BATCHCORDER_VERSION_MINOR: u32 = 2;

/// Patch version of the library: fixes that leave the C ABI as it was.
pub const BATCHCORDER_VERSION_PATCH: u32 = 0;

/// Parse a decimal version component at compile time.
const fn parse(text: &str) -> u32 {
    let bytes = text.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "version component is not a number"
        );
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

const _: () = {
    assert!(
        BATCHCORDER_VERSION_MAJOR == parse(env!("CARGO_PKG_VERSION_MAJOR")),
        "update BATCHCORDER_VERSION_MAJOR in src/version.rs to Cargo.toml's version"
    );
    assert!(
        BATCHCORDER_VERSION_MINOR == parse(env!("CARGO_PKG_VERSION_MINOR")),
        "update BATCHCORDER_VERSION_MINOR in src/version.rs to Cargo.toml's version"
    );
    assert!(
        BATCHCORDER_VERSION_PATCH == parse(env!("CARGO_PKG_VERSION_PATCH")),
        "update BATCHCORDER_VERSION_PATCH in src/version.rs to Cargo.toml's version"
    );
};

#[cfg(test)]
mod tests {
    #[test]
    fn bc_version_is_the_package_version() {
        // The macros are checked against the package version at compile time above.
        // SAFETY: `bc_version` returns a static NUL-terminated string.
        let c = unsafe { std::ffi::CStr::from_ptr(super::super::bc_version()) };
        assert_eq!(c.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
