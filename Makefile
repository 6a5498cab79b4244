PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check phalanx tests
	$(BIN)/pytest -q

demo: install
	$(BIN)/phalanx demo

lint: install
	$(BIN)/ruff check phalanx tests

clean:
	rm -rf $(VENV) build *.egg-info
