#!/usr/bin/env bash
# Makes sure the python3 on PATH has the real v2 clients the tests drive balsa with:
# tritonclient[http] (NVIDIA's KServe v2 client) and schemathesis (OpenAPI fuzzer), from
# PyPI. Quiet when they are already there; exits non-zero when they cannot be installed.
set -euo pipefail
py=${PYTHON:-python3}
if "$py" -c 'import tritonclient.http, numpy, schemathesis' 2>/dev/null; then
    exit 0
fi
echo "py_deps: installing tritonclient[http] and schemathesis into $($py -c 'import sys; print(sys.prefix)')"
"$py" -m pip install --quiet --disable-pip-version-check 'tritonclient[http]' schemathesis
"$py" -c 'import tritonclient.http, numpy, schemathesis'
