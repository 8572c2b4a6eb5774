#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed, for the store's integration
# tests, which start a throw-away server themselves. Installs the Debian/Ubuntu packages only when they are missing;
# no cluster is created and no service is started.
set -euo pipefail

have_postgres() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        return 0
    fi
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

if have_postgres; then
    echo "ensure-postgres: PostgreSQL server binaries found"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: PostgreSQL server binaries are missing and apt-get is not available;" \
        "install PostgreSQL (initdb, pg_ctl) or set TASTEBUD_TEST_POSTGRES_URL" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ensure-postgres: PostgreSQL server binaries are missing; run this script as root to install them" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "ensure-postgres: installing PostgreSQL server packages"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# postgresql-common first, so that installing the server does not create and start a default cluster (the tests
# run their own); the official PostgreSQL container image does the same.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
if [ -f /etc/postgresql-common/createcluster.conf ]; then
    "${SUDO[@]}" sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! have_postgres; then
    echo "ensure-postgres: installation finished but pg_ctl is still missing" >&2
    exit 1
fi
echo "ensure-postgres: installed $(compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' | head -n 1)"
