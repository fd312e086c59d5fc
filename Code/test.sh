#!/usr/bin/env bash
# The project's test command (the README gives it; .ci/run calls it). On a fresh machine it prepares
# everything itself: system packages for the browser and Docker tests (as root), the .venv, the installs.
# Extra arguments go to pytest, e.g. `bash Code/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."

# Under CI=true a machine that cannot be prepared stops the run (ci_setup.sh exits 1); elsewhere the tests
# that need what is missing skip, with the reason in pytest's summary.
if [ "$(id -u)" = 0 ] || [ "${CI:-}" = "true" ]; then
  bash Code/ci_setup.sh || { echo "test.sh: machine setup failed (CI=true)"; exit 1; }
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# Exact versions from requirements.lock (see the README, "Upgrading dependencies"); --no-deps because the lock is
# complete: nothing a registry published since it was written gets in. Then the project itself, editable, built
# with the lock's setuptools. (grep drops this machine's harmless pip index warnings; a failed install still stops
# the run.)
pipq() {
  if ! .venv/bin/pip install -q --disable-pip-version-check --no-deps "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; then
    echo "test.sh: pip install $* failed"; exit 1
  fi
}
pipq -r requirements.lock
pipq --no-build-isolation -e .
exec .venv/bin/python -m pytest "$@"
