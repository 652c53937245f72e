# The project's commands. Each target sets up what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast setup cluster bench bench-perpeer bench-scale clean

# Set up and serve on http://localhost:8080/ with the embedded defaults
# (make run PORT=8081 for another port).
run:
	./scripts/run.sh

# Set up and run the whole test suite (SQLite, then PostgreSQL when reachable).
test:
	./scripts/test.sh $(ARGS)

# The first tier only: the protocol and the consumer in-process, no server (under 2 minutes).
test-fast:
	./scripts/test.sh --fast $(ARGS)

setup:
	./scripts/setup.sh

# The cluster topology from real processes: Redis, workers, nginx on :8080.
cluster:
	./scripts/cluster.sh

# The benchmark beside the reference PeerServer.
bench:
	./bench/run.sh

# What one idle peer costs (memory, CPU per open), beside the reference; about 7 minutes.
bench-perpeer:
	./bench/run.sh --perpeer

# 100 000 idle peers on six workers, Redis and PostgreSQL, held 10 minutes; about 15 minutes.
bench-scale:
	./bench/run.sh --scale $(ARGS)

clean:
	rm -rf $(VENV) node_modules staticfiles .pytest_cache
