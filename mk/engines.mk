# make test-engines: batchcorder.ray and batchcorder.dask under the real engines
# (tests/engines: a local Ray with two CPUs, a Dask LocalCluster of two worker processes),
# and docs/engines.md's blocks (tests/python/test_docs.py with BC_DOCS_ENGINES=1).
#
# Not part of `make test`: Ray's wheel alone is about 70 MB and starts a dozen processes.
# The extras go into the project's virtualenv, through the wheel's own `ray` and `dask`
# extras, so what is tested is what `pip install 'batchcorder[ray,dask]'` installs.

.PHONY: test-engines
test-engines: install-python venv-test
	$(VPY) -m pip install --progress-bar on "$(WHEEL_FILE)[ray,dask]"
	$(VPY) -m pytest -q -p no:cacheprovider tests/engines
	BC_DOCS_ENGINES=1 $(VPY) -m pytest -q -p no:cacheprovider tests/python/test_docs.py -k engines.md
