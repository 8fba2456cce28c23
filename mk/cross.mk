# mk/cross.mk: the workspace checked for the other platforms batchcorder builds for, from
# this Linux x86_64 machine: macOS (Apple silicon and Intel) and Linux aarch64.
#
# Included from the top-level Makefile, or used on its own from the repository root:
#   make check-cross                                  # every target in CROSS_TARGETS
#   make check-cross CROSS_TARGETS=x86_64-apple-darwin
#   make -f mk/cross.mk check-cross
#
# For each target: `cargo clippy --workspace --all-targets --target <t> -- -D warnings`,
# then the same with the tests' fault injection on (as the Linux clippy runs). A check
# compiles and lints every crate, tests included, but links nothing, so no macOS SDK is
# needed; the one C dependency (zstd-sys, through the cc crate) is compiled by zig
# (tools/zigcc), taken from the project's virtualenv: `make venv-build` installs PyPI's
# ziglang there, and this file runs it when zig is missing. The rustup targets are
# added when missing (rustup downloads their standard libraries once).

# Including this file must not change the includer's default goal.
BC_CROSS_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BC_CROSS_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
CARGO         ?= cargo
VENV          ?= .venv
CROSS_TARGETS ?= aarch64-apple-darwin x86_64-apple-darwin aarch64-unknown-linux-gnu
# zig as a command; tools/zigcc runs it.
CROSS_ZIG     ?= $(if $(filter /%,$(VENV)),$(VENV),$(BC_CROSS_ROOT)/$(VENV))/bin/python -m ziglang
# zig's name for each Rust target: macOS at zig's default minimum, Linux at glibc 2.17
# (the wheel's floor).
BC_ZIG_TARGET_aarch64-apple-darwin      := aarch64-macos
BC_ZIG_TARGET_x86_64-apple-darwin       := x86_64-macos
BC_ZIG_TARGET_aarch64-unknown-linux-gnu := aarch64-linux-gnu.2.17
BC_ZIGCC := $(BC_CROSS_ROOT)/tools/zigcc

.PHONY: check-cross cross-tools $(addprefix check-cross-,$(CROSS_TARGETS))

check-cross: $(addprefix check-cross-,$(CROSS_TARGETS))

# The rustup targets and zig; `make venv-build` (the top-level Makefile's) when zig is missing.
cross-tools:
	@for t in $(CROSS_TARGETS); do \
	  rustup target list --installed | grep -qx "$$t" || rustup target add "$$t" || exit 1; \
	done
	@$(CROSS_ZIG) version >/dev/null 2>&1 || $(MAKE) --no-print-directory -C $(BC_CROSS_ROOT) venv-build
	@$(CROSS_ZIG) version >/dev/null \
	  || { echo "no zig: $(CROSS_ZIG) fails (make venv-build installs it)"; exit 1; }

# check-cross-<target>: $(1) is the Rust target. The cc crate reads CC_<target> and
# AR_<target> (dashes as underscores).
define BC_CROSS_CHECK
check-cross-$(1): cross-tools
	cd $(BC_CROSS_ROOT) && ZIG="$(CROSS_ZIG)" \
	  CC_$(subst -,_,$(1))="$(BC_ZIGCC) cc $(BC_ZIG_TARGET_$(1))" \
	  AR_$(subst -,_,$(1))="$(BC_ZIGCC) ar" \
	  $(CARGO) clippy --workspace --all-targets --target $(1) -- -D warnings
	cd $(BC_CROSS_ROOT) && ZIG="$(CROSS_ZIG)" \
	  CC_$(subst -,_,$(1))="$(BC_ZIGCC) cc $(BC_ZIG_TARGET_$(1))" \
	  AR_$(subst -,_,$(1))="$(BC_ZIGCC) ar" \
	  $(CARGO) clippy --workspace --all-targets --features batchcorder-core/fault-injection \
	  --target $(1) -- -D warnings
endef
$(foreach t,$(CROSS_TARGETS),$(eval $(call BC_CROSS_CHECK,$(t))))

.DEFAULT_GOAL := $(BC_CROSS_SAVED_DEFAULT_GOAL)
