# The two commands of the README: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test clean

$(VENV)/.installed: setup.py deeplab_ssl/losses/ssl_kernel.cc
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,crf,tflite]'
	# The SSL's CPU kernel (needs g++); without it SSLoss takes its XLA path.
	$(PY) -m deeplab_ssl.losses.build_kernel || echo "SSL kernel not built: SSLoss uses XLA"
	touch $@

install: $(VENV)/.installed

# Build the generated demo set, train on it, evaluate, export: the whole workflow on this CPU.
demo: install
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info deeplab_ssl/losses/_ssl_kernel_*.so
