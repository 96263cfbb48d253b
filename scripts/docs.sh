#!/usr/bin/env bash
# Builds the documentation site (docs/) strictly into docs/_site: sets up .venv first (like scripts/test.sh), with
# the docs extra. Any warning (a broken link or cross-reference, a docstring that does not render) fails the build.
# So does a walkthrough notebook whose committed outputs are missing or stale (refresh: bash scripts/notebook.sh).
# Extra arguments go to mkdocs build (e.g. --site-dir /tmp/site). tests/test_site.py runs the same build in CI.
set -euo pipefail
. "$(dirname "$0")/env.sh"
export NO_MKDOCS_2_WARNING=1  # Material for MkDocs' banner about MkDocs 2.0 (docs/README.md)
python -m mkdocs build --strict -f docs/mkdocs.yml "$@"
echo "docs: built into docs/_site (python -m http.server -d docs/_site 8000, then open http://localhost:8000)"
