# The two commands of the README: `make demo` and `make test`. Each creates or reuses .venv:
# the demo installs what it runs, the tests add their tools and the optional extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
DEMO_EXTRAS := tflite
TEST_EXTRAS := test,crf,tflite,jax

.PHONY: install demo test clean

# $(call install_into_venv,EXTRAS): the package with EXTRAS, and the SSL's CPU kernel.
define install_into_venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(1)]'
	# The SSL's CPU kernel (needs g++); without it SSLoss takes its XLA path.
	$(PY) -m deeplab_ssl.losses.build_kernel || echo "SSL kernel not built: SSLoss uses XLA"
	touch $@
endef

$(VENV)/.installed-demo: setup.py deeplab_ssl/losses/ssl_kernel.cc
	$(call install_into_venv,$(DEMO_EXTRAS))

$(VENV)/.installed: setup.py deeplab_ssl/losses/ssl_kernel.cc
	$(call install_into_venv,$(TEST_EXTRAS))

install: $(VENV)/.installed

# Build the generated demo set, train on it, evaluate, export: the whole workflow on this CPU.
demo: $(VENV)/.installed-demo
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

# Two workers, whole files each (module fixtures train models once): much of a test's time is
# single-threaded (starting Python, tracing tf.functions), so two share 2 cores well: 26 -> 15
# minutes on a 2-core AVX2 machine.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info deeplab_ssl/losses/_ssl_kernel_*.so
