# mk/fuzz.mk: libFuzzer + AddressSanitizer (fuzz/), two targets:
# - c_abi_sequences: the C ABI, sharing its model with tests/c_abi_sequences.rs through
#   tests/support/c_abi_model.rs;
# - damaged_saves: persisted caches cut short, edited or crafted, opened in every verify
#   mode and read to the end (docs/reliability.md).
#
# Included from the top-level Makefile, or used on its own from the repository root:
#   make -f mk/fuzz.mk fuzz-smoke                    # each target: its seeds, then 60 s (unoptimised)
#   make -f mk/fuzz.mk fuzz-long FUZZ_SECONDS=3600   # each target; default 1200 s
#   make -f mk/fuzz.mk fuzz-smoke FUZZ_TARGETS=damaged_saves   # one target
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the nightly flags that
# cargo-fuzz passes (-Zsanitizer=address). cargo-fuzz is installed if missing.
# Both make goals fail on any crash, failed assertion, ASan or LeakSanitizer report,
# timeout or RSS blow-up; the reproducer is saved in fuzz/artifacts/<target>/ and replays
# with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# (`cargo fuzz fmt` instead of `run` prints it as an op sequence or a list of edits).
#
# New corpus entries go to fuzz/target/corpus/<target>/ (ignored by git); the committed
# seeds in fuzz/corpus/<target>/ are only read.

# Including this file must not change the includer's default goal.
BC_FUZZ_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BC_FUZZ_ROOT       := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
CARGO              ?= cargo
CARGO_FUZZ_VERSION ?= 0.13.2
# FUZZ_TARGET=<one target> still works, as before there were two.
FUZZ_TARGETS       ?= $(or $(FUZZ_TARGET),c_abi_sequences damaged_saves)
FUZZ_SMOKE_SECONDS ?= 60
FUZZ_SECONDS       ?= 1200
# -timeout: one input runs in milliseconds, so a minute means a hang (a deadlock).
FUZZ_LIBFUZZER_FLAGS ?= -rss_limit_mb=4096 -detect_leaks=1 -max_len=1024 -timeout=60 \
  -print_final_stats=1
# CARGO_TARGET_DIR: batchcorder's build.rs then writes its generated headers under
# fuzz/target instead of the main target/ directory.
BC_FUZZ = cd $(BC_FUZZ_ROOT) && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(BC_FUZZ_ROOT)/fuzz/target \
  $(CARGO) fuzz

.PHONY: fuzz-tool fuzz-build fuzz-smoke fuzz-long

# cargo-fuzz at the pinned version, installed only if missing or different.
fuzz-tool:
	@$(CARGO) fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' \
	  || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)

fuzz-build: fuzz-tool
	set -e; for target in $(FUZZ_TARGETS); do \
	  $(BC_FUZZ) build $$target --sanitizer address; done

# Per target: every seed once, then FUZZ_SMOKE_SECONDS of fuzzing. An unoptimised build
# (--dev, debug assertions on) builds far faster, and a short run needs no speed.
# fuzz-long keeps the optimised build.
fuzz-smoke: fuzz-tool
	set -e; for target in $(FUZZ_TARGETS); do \
	  mkdir -p $(BC_FUZZ_ROOT)/fuzz/target/corpus/$$target; \
	  $(BC_FUZZ) run $$target --dev --sanitizer address fuzz/corpus/$$target -- \
	    $(FUZZ_LIBFUZZER_FLAGS) -runs=0; \
	  $(BC_FUZZ) run $$target --dev --sanitizer address fuzz/target/corpus/$$target \
	    fuzz/corpus/$$target -- $(FUZZ_LIBFUZZER_FLAGS) -max_total_time=$(FUZZ_SMOKE_SECONDS); \
	done

fuzz-long: fuzz-build
	set -e; for target in $(FUZZ_TARGETS); do \
	  mkdir -p $(BC_FUZZ_ROOT)/fuzz/target/corpus/$$target; \
	  $(BC_FUZZ) run $$target --sanitizer address fuzz/target/corpus/$$target \
	    fuzz/corpus/$$target -- $(FUZZ_LIBFUZZER_FLAGS) -max_total_time=$(FUZZ_SECONDS); \
	done

.DEFAULT_GOAL := $(BC_FUZZ_SAVED_DEFAULT_GOAL)
