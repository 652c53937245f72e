# The project's commands. Each target sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test setup cluster bench clean

# Set up and serve on http://localhost:8080/ with the embedded defaults.
run:
	./scripts/run.sh

# Set up and run the whole test suite (SQLite, then PostgreSQL when reachable).
test:
	./scripts/test.sh

setup:
	./scripts/setup.sh

# The cluster topology from real processes: Redis, workers, nginx on :8080.
cluster:
	./scripts/cluster.sh

# The benchmark beside the reference PeerServer.
bench:
	./bench/run.sh

clean:
	rm -rf $(VENV) node_modules staticfiles .pytest_cache
