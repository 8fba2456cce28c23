# make test-torch: worker_shard() and shard readers under real PyTorch (tests/torch).
#
# Not part of `make test`: the PyPI torch wheel for Linux x86_64 (2.15.0) is 539 MB and
# pulls about 20 CUDA packages (nvidia-cudnn, -cublas, -nccl, triton...), several GB in
# all. It goes into a virtualenv of its own so that the main one stays as `make test`
# expects it. TORCH_INDEX=https://download.pytorch.org/whl/cpu takes PyTorch's CPU-only
# wheel (about 200 MB) where that index is reachable.

TORCH_VENV  ?= build/torch-venv
TORCH_INDEX ?=

.PHONY: test-torch
$(TORCH_VENV)/.ready: | wheel
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --progress-bar on --no-cache-dir \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(TORCH_VENV)/bin/python -m pip install --progress-bar on "pyarrow>=14" "cffi>=1.17" numpy "pytest>=8" "pytest-timeout>=2.3"
	touch $@

test-torch: wheel $(TORCH_VENV)/.ready
	$(TORCH_VENV)/bin/python -m pip install -q --force-reinstall --no-deps $(WHEEL_FILE)
	cd build && $(CURDIR)/$(TORCH_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CURDIR)/tests/torch
