#!/usr/bin/env bash
# The test suite: lint and format checks, then the tests, including notebook 01 at full
# seed scale. Extra arguments go to pytest (e.g. -m "not slow" for the quick tests only).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
ruff format --check .
python -m pytest "$@"
