# `make stress`: the long reliability runs behind docs/reliability.md (about 60 minutes on
# 2 cores; FUZZ_SECONDS, from mk/fuzz.mk, sets the fuzzing time of each fuzz target).
# `make test` runs the same tests at scale 1 and a short fuzz smoke run.

STRESS_SCALE ?= 25
STRESS_LOG   ?= build/stress.log

.PHONY: stress stress-run tsan miri

stress: install-python venv-test
	mkdir -p build
	bash -o pipefail -c '$(MAKE) --no-print-directory stress-run 2>&1 | tee $(STRESS_LOG)'

stress-run:
	@echo "== stress: scale $(STRESS_SCALE), fuzz $(FUZZ_SECONDS) s, started $$(date -u +%FT%TZ)"
	BC_STRESS_SCALE=$(STRESS_SCALE) $(CARGO) test --workspace --release --features fault-injection
	BC_STRESS_SCALE=$(STRESS_SCALE) $(VPY) -m pytest -q -p no:cacheprovider \
	  tests/python/test_model.py tests/python/test_stress.py tests/python/test_disk.py \
	  tests/python/test_crash_leftovers.py tests/python/test_damaged_saves.py \
	  --hypothesis-show-statistics
	$(MAKE) --no-print-directory tsan
	$(MAKE) --no-print-directory miri
	$(MAKE) --no-print-directory fuzz-long
	@echo "== stress: finished $$(date -u +%FT%TZ)"

# The core's threaded tests under ThreadSanitizer; std is rebuilt instrumented, which
# needs rust-src. RUSTC_BOOTSTRAP lets the stable toolchain take -Z flags. HOST_TARGET is
# the Makefile's.
tsan:
	rustup component add rust-src
	RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan \
	  $(CARGO) test -Zbuild-std --target $(HOST_TARGET) -p batchcorder-core --features fault-injection \
	  --lib --test core --test disk

# Under Miri, which needs a nightly toolchain: the core's parts with no FFI and no mmap
# (memory tier, registry, errors, the in-memory core), and the C Data engine's unit tests
# (its unsafe code: kept trees, export images, the checks), with C producers and consumers
# played by arrow-rs.
miri:
	rustup run nightly cargo miri --version >/dev/null 2>&1 \
	  || rustup toolchain install nightly --profile minimal --component miri
	CARGO_TARGET_DIR=target/miri $(CARGO) +nightly miri test -p batchcorder-core --lib --test core -- \
	  --skip bounded_pass  # 1000 batches: hours under Miri; TSan and the release run cover it
	CARGO_TARGET_DIR=target/miri $(CARGO) +nightly miri test -p batchcorder-cdata --lib
