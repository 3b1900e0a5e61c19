# Entry points for a new machine; each creates .venv and installs geoseg when missing.
#   make demo   -> the main job: the sample AOI pipeline (tile, train, predict, evaluate)
#   make test   -> the test-suite
#   make lint   -> ruff check, ruff format --check, mypy (all must be clean; CI runs it)
#   make qgis-plugin -> link the QGIS Processing plugin into the default QGIS profile
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.geoseg-installed
OUT    ?= sample_run
QGIS_PLUGINS ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default/python/plugins

.PHONY: install demo test lint bench render qgis-plugin clean

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
	$(VENV)/bin/ruff check geoseg tests benchmarks scripts qgis_plugin
	$(VENV)/bin/ruff format --check geoseg tests benchmarks scripts qgis_plugin
	$(VENV)/bin/mypy geoseg

render:
	QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/render_qgis.py $(OUT)/predict --out docs/qgis_render.jpg

# A symlink, so the plugin follows this checkout (and finds its .venv/bin/geoseg); copy the folder instead
# for a standalone install. Then enable "geoseg Processing" in QGIS's plugin manager (or
# `qgis_process.bin plugins enable geoseg_processing`).
qgis-plugin:
	mkdir -p "$(QGIS_PLUGINS)"
	ln -sfn "$(CURDIR)/qgis_plugin/geoseg_processing" "$(QGIS_PLUGINS)/geoseg_processing"
	@echo "linked $(QGIS_PLUGINS)/geoseg_processing -> $(CURDIR)/qgis_plugin/geoseg_processing"

clean:
	rm -rf $(OUT) .pytest_cache
