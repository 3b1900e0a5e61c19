# Entry points for a new machine; each creates .venv and installs geoseg when missing.
#   make demo   -> the main job: the sample AOI pipeline (tile, train, predict, evaluate)
#   make test   -> the test-suite
#   make lint   -> ruff check + mypy (both must be clean; CI runs it)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.geoseg-installed
OUT    ?= sample_run

.PHONY: install demo test lint bench render clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geoseg run pipelines/sample_aoi.yaml --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check geoseg tests benchmarks scripts
	$(VENV)/bin/mypy geoseg

render:
	QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/render_qgis.py $(OUT)/predict --out docs/qgis_render.jpg

clean:
	rm -rf $(OUT) .pytest_cache
