#!/usr/bin/env bash
# Dependency vulnerability audit of the installed environment (run by `make test`).
#
# pip-audit checks every distribution installed in the virtual environment (Tastebud itself, installed editable,
# is skipped) against a vulnerability service: PyPI's JSON API by default (AUDIT_SERVICE=osv for OSV).
#
#   exit 0  no known vulnerability in what could be audited
#   exit 0  "SKIPPED: vulnerability database unreachable (...)": a network error (DNS, connection, timeout)
#   exit 1  vulnerabilities found (each is listed), or pip-audit failed for any other reason
#
# Distributions the service does not know (versions from a private index or a local wheel directory) cannot be
# audited; they are counted in a notice, and AUDIT_STRICT=1 turns an incomplete audit into a failure.
# A vulnerability that does not apply to Tastebud may be ignored only with a written reason: add
# `--ignore-vuln ID` to IGNORE below with a comment naming the ID and why it does not apply.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SERVICE=${AUDIT_SERVICE:-pypi}
IGNORE=()

if [[ ! -x "$VENV/bin/pip-audit" ]]; then
    echo "audit: $VENV/bin/pip-audit is missing; run: $VENV/bin/python -m pip install -e '.[dev]'" >&2
    exit 1
fi

out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

"$VENV/bin/pip-audit" --local --skip-editable --vulnerability-service "$SERVICE" --progress-spinner off \
    --timeout 15 --format json --output "$out" "${IGNORE[@]}" 2>"$err"
rc=$?

"$VENV/bin/python" - "$out" "$err" "$rc" "$SERVICE" "${AUDIT_STRICT:-0}" <<'EOF'
import json
import re
import sys

out_path, err_path, rc, service, strict = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
stderr = open(err_path, encoding="utf-8", errors="replace").read()
try:
    report = json.load(open(out_path, encoding="utf-8"))
except (OSError, ValueError):
    report = None

NETWORK = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|Timeout|NameResolutionError|Name or service not known|"
    r"Temporary failure in name resolution|Failed to resolve|Max retries exceeded|Network is unreachable|"
    r"Connection refused|ProxyError|SSLError"
)

if report is None:
    # No report: pip-audit stopped before auditing. Only a network error is a skip; anything else fails.
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no output")
    if rc != 0 and NETWORK.search(stderr):
        print(f"SKIPPED: vulnerability database unreachable ({service}: {last.strip()[:300]})")
        sys.exit(0)
    print(f"audit: pip-audit failed (exit {rc}): {last.strip()}", file=sys.stderr)
    print(stderr[-4000:], file=sys.stderr)
    sys.exit(1)

deps = report.get("dependencies", [])
vulnerable = [d for d in deps if d.get("vulns")]
skipped = [d for d in deps if "skip_reason" in d and "editable" not in d["skip_reason"]]
audited = [d for d in deps if "skip_reason" not in d]
if vulnerable:
    print(f"audit: FAILED: {sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities in {len(vulnerable)} "
          f"installed distributions ({service}):", file=sys.stderr)
    for d in vulnerable:
        for v in d["vulns"]:
            fixed = ", ".join(v.get("fix_versions") or []) or "no fixed version"
            aliases = ", ".join(v.get("aliases") or [])
            print(f"  {d['name']} {d['version']}: {v['id']}{f' ({aliases})' if aliases else ''}; fixed in {fixed}",
                  file=sys.stderr)
    sys.exit(1)
if rc != 0:
    print(f"audit: pip-audit exited {rc} without listing a vulnerability:\n{stderr[-4000:]}", file=sys.stderr)
    sys.exit(1)
if skipped:
    names = ", ".join(f"{d['name']}" for d in skipped[:12]) + (" ..." if len(skipped) > 12 else "")
    what = "SKIPPED" if not audited else "INCOMPLETE"
    print(f"{what}: {len(skipped)} of {len(skipped) + len(audited)} installed distributions could not be audited: "
          f"the vulnerability database ({service}) does not know their versions ({names})")
    if strict:
        print("audit: AUDIT_STRICT=1: an incomplete audit fails", file=sys.stderr)
        sys.exit(1)
    if not audited:
        sys.exit(0)
print(f"audit: no known vulnerabilities in {len(audited)} audited distributions ({service})")
EOF
