# Each target sets up what it needs. `make demo` installs only the core (no TensorFlow, no torch);
# `make test` installs every backend and the TF-Slim reference (about 8 GB, a few minutes the first time).
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
FIXTURE ?= fixtures/inception_v3/model.ckpt

.PHONY: demo test fixtures clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[all,test]'
	touch $@

$(DEMO_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install --quiet -e .
	touch $@

demo: $(DEMO_VENV)/.installed
	mkdir -p .cache/demo
	$(DEMO_VENV)/bin/ckpt-convert --from slim --to torch $(FIXTURE) -o .cache/demo/inception_v3.pth --force

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -n 2 $(PYTEST_ARGS)

fixtures: $(VENV)/.installed
	$(VENV)/bin/python fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) $(DEMO_VENV) .cache
