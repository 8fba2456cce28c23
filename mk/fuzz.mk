# mk/fuzz.mk: libFuzzer + AddressSanitizer over the C ABI (fuzz/, whose target shares its
# model with tests/c_abi_sequences.rs through tests/support/c_abi_model.rs).
#
# Included from the top-level Makefile, or used on its own from the repository root:
#   make -f mk/fuzz.mk fuzz-smoke                    # the seed corpus, then 60 s (unoptimised)
#   make -f mk/fuzz.mk fuzz-long FUZZ_SECONDS=3600   # default 1200 s
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the nightly flags that
# cargo-fuzz passes (-Zsanitizer=address). cargo-fuzz is installed if missing.
# Both targets fail on any crash, failed model assertion, ASan or LeakSanitizer report,
# timeout or RSS blow-up; the reproducer is saved in fuzz/artifacts/c_abi_sequences/ and
# replays with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run c_abi_sequences fuzz/artifacts/c_abi_sequences/<file>
# (`cargo fuzz fmt` instead of `run` prints it as an op sequence).
#
# New corpus entries go to fuzz/target/corpus/ (ignored by git); the committed seeds in
# fuzz/corpus/ are only read.

# Including this file must not change the includer's default goal.
BC_FUZZ_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BC_FUZZ_ROOT       := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
CARGO              ?= cargo
CARGO_FUZZ_VERSION ?= 0.13.2
FUZZ_TARGET        ?= c_abi_sequences
FUZZ_SMOKE_SECONDS ?= 60
FUZZ_SECONDS       ?= 1200
FUZZ_SEEDS         := fuzz/corpus/$(FUZZ_TARGET)
FUZZ_WORK_CORPUS   := fuzz/target/corpus/$(FUZZ_TARGET)
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
	$(BC_FUZZ) build $(FUZZ_TARGET) --sanitizer address

# Every seed once, then FUZZ_SMOKE_SECONDS of fuzzing. An unoptimised build (--dev, debug
# assertions on) builds far faster, and a short run needs no speed. fuzz-long keeps the
# optimised build.
fuzz-smoke: fuzz-tool
	mkdir -p $(BC_FUZZ_ROOT)/$(FUZZ_WORK_CORPUS)
	$(BC_FUZZ) run $(FUZZ_TARGET) --dev --sanitizer address $(FUZZ_SEEDS) -- \
	  $(FUZZ_LIBFUZZER_FLAGS) -runs=0
	$(BC_FUZZ) run $(FUZZ_TARGET) --dev --sanitizer address $(FUZZ_WORK_CORPUS) $(FUZZ_SEEDS) -- \
	  $(FUZZ_LIBFUZZER_FLAGS) -max_total_time=$(FUZZ_SMOKE_SECONDS)

fuzz-long: fuzz-build
	mkdir -p $(BC_FUZZ_ROOT)/$(FUZZ_WORK_CORPUS)
	$(BC_FUZZ) run $(FUZZ_TARGET) --sanitizer address $(FUZZ_WORK_CORPUS) $(FUZZ_SEEDS) -- \
	  $(FUZZ_LIBFUZZER_FLAGS) -max_total_time=$(FUZZ_SECONDS)

.DEFAULT_GOAL := $(BC_FUZZ_SAVED_DEFAULT_GOAL)
