#!/bin/sh
# scripts/deps.sh: install the Debian 12 packages that building, testing, benchmarking and
# the demo need. Idempotent: packages already present are skipped, so a second run is quick.
# Uses sudo when not root.
set -eu

PKGS="
build-essential pkg-config make gcc clang clang-format libclang-rt-14-dev
libknot-dev liburcu-dev libuv1-dev libsodium-dev libyaml-dev
libcurl4-openssl-dev libmaxminddb-dev libmicrohttpd-dev libsqlite3-dev sqlite3 libpq-dev
knot knot-dnsutils dnsutils dnsperf gdnsd
python3 python3-dnspython python3-pytest python3-hypothesis python3-psycopg2
postgresql haproxy iproute2 iptables procps psmisc
libmaxmind-db-writer-perl mmdb-bin scdoc systemd
chromium prometheus
bucardo postgresql-plperl-15 libdbd-pg-perl libdbix-safe-perl libboolean-perl
"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

# bench/sync.sh runs Bucardo, whose control database needs PL/Perl. postgresql-plperl-15
# depends on exactly one postgresql-15 version: ask for the one already installed when the
# archive still has it, so that installing PL/Perl never upgrades the server under running
# clusters.
pgv=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
case " $missing " in
*" postgresql-plperl-15 "*)
    if [ -n "$pgv" ] && apt-cache show "postgresql-plperl-15=$pgv" >/dev/null 2>&1; then
        missing=$(echo "$missing" | sed "s/ postgresql-plperl-15\( \|\$\)/ postgresql-plperl-15=$pgv\1/")
    fi
    ;;
esac

echo "deps.sh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Packaged daemons (knot, gdnsd, postgresql, haproxy) must not grab ports on install: the
# tests and benchmarks start their own instances on free loopback ports. policy-rc.d only
# exists for the duration of the install and only if we created it.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" = 1 ]; then
        $SUDO rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT

if ! $SUDO apt-get install -y -q --no-install-recommends $missing; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
