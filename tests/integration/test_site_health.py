"""Issue 3 end to end: multisited probing two sites built of real parts (HAProxy in front of
two multisite-webapp instances each; site eu on SQLite, site us on PostgreSQL) and answering
a load-balanced name with the sites that can serve. Each step breaks or restores one part and
then waits, with a generous deadline, for the A and AAAA answers (membership and order).
Timing figures come from bench/failover.sh, not from here.
"""

import os
import signal
import subprocess
import tempfile

import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import wait_for
from pgutil import PgCluster
from sites import Site, start_multisited_with
from test_webapp import UNPRIV, as_user

DEADLINE = 20.0
NAME = "app.example.com."


def answers(srv, rdtype):
    q = dns.message.make_query(NAME, rdtype)
    r = dns.query.udp(q, srv.addr, port=srv.port, timeout=2)
    if r.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(r.rcode())
    return [rd.address for rrset in r.answer for rd in rrset]


def expect(srv, sites, what):
    want4 = [s.v4 for s in sites]
    want6 = [s.v6 for s in sites]
    wait_for(lambda: answers(srv, "A") == want4 and answers(srv, "AAAA") == want6, DEADLINE,
             f"{what}: A {want4} AAAA {want6} (now A {answers(srv, 'A')})")


def ms_conf(sites):
    return ("sites:\n" + "".join(s.conf() for s in sites) +
            "names:\n"
            f"  - name: {NAME}\n"
            f"    sites: [{', '.join(s.name for s in sites)}]\n"
            "    ttl: 30\n")


@pytest.fixture(scope="module")
def cluster(workdir):
    pg = PgCluster().start()
    eu = us = None
    try:
        eu = Site(workdir, "eu", "192.0.2.10", "2001:db8::10", db_kind="sqlite")
        us = Site(workdir, "us", "198.51.100.10", "2001:db8:1::10", db_kind="pg", pg=pg)
        yield eu, us, pg
    finally:
        for s in (eu, us):
            if s:
                s.stop()
        pg.destroy()


@pytest.fixture(scope="module")
def ms(workdir, cluster):
    eu, us, _ = cluster
    srv = start_multisited_with(workdir, ms_conf([eu, us]))
    yield srv
    assert srv.stop() == 0, "multisited should exit 0 on SIGTERM"


def test_all_up(ms, cluster):
    eu, us, _ = cluster
    expect(ms, [eu, us], "both sites up")


def test_web_servers_one_by_one(ms, cluster):
    eu, us, _ = cluster
    expect(ms, [eu, us], "start")
    eu.webs[0].stop()
    expect(ms, [eu, us], "eu web1 stopped: 1 of 2 web servers is enough (k=1)")
    eu.webs[1].stop()
    expect(ms, [us], "eu web1 and web2 stopped: eu left out")
    assert "site eu DOWN" in ms.log_tail(400)
    eu.restart_web(0)
    eu.restart_web(1)
    expect(ms, [eu, us], "eu web servers back")


def test_sqlite_database_broken(ms, cluster):
    eu, us, _ = cluster
    expect(ms, [eu, us], "start")
    os.chmod(eu.db_path, 0o000)
    try:
        if os.geteuid() == 0:
            r = subprocess.run(as_user(UNPRIV) + ["head", "-c1", eu.db_path], capture_output=True)
            assert r.returncode != 0, "chmod 000 did not lock the web apps' user out"
        expect(ms, [us], "eu's SQLite file unreadable")
        log = ms.log_tail(400)
        assert f'lacks "{eu.identity}"' in log or "db" in log, log
    finally:
        os.chmod(eu.db_path, 0o644)
    expect(ms, [eu, us], "eu's database readable again")


def test_postgresql_stopped(ms, cluster):
    eu, us, pg = cluster
    expect(ms, [eu, us], "start")
    pg.stop()
    try:
        expect(ms, [eu], "us's PostgreSQL stopped")
    finally:
        pg.start()
    expect(ms, [eu, us], "us's PostgreSQL back")


def test_haproxy_stopped(ms, cluster):
    eu, us, _ = cluster
    expect(ms, [eu, us], "start")
    eu.stop_haproxy()
    try:
        expect(ms, [us], "eu's HAProxy stopped")
    finally:
        eu.start_haproxy()
    expect(ms, [eu, us], "eu's HAProxy back")


def test_all_down_fallback_all(ms, cluster):
    eu, us, _ = cluster
    expect(ms, [eu, us], "start")
    eu.stop_haproxy()
    us.stop_haproxy()
    try:
        # fallback "all" (the default, as gdnsd): every site in the configured order
        wait_for(lambda: "site us DOWN" in ms.log_tail(400) and
                 ms.log_tail(400).rfind("site eu DOWN") > 0, DEADLINE, "both sites DOWN")
        expect(ms, [eu, us], "no site up: fallback to all")
    finally:
        eu.start_haproxy()
        us.start_haproxy()
    expect(ms, [eu, us], "both back")


def test_lb_only_site(workdir):
    """A site that relies on its load balancer alone: one backend checks the web servers,
    another the database page, and the verdict's reasons tell them apart."""
    site = Site(workdir, "lb", "203.0.113.10", "2001:db8:2::10", db_kind="sqlite", lb_only=True)
    try:
        srv = start_multisited_with(workdir, "sites:\n" + site.conf() + "names:\n"
                                    f"  - name: {NAME}\n    sites: [lb]\n"
                                    "    fallback: servfail\n")
        try:
            expect(srv, [site], "LB-only site up")
            os.chmod(site.db_path, 0o000)
            try:
                wait_for(lambda: answers(srv, "A") == "SERVFAIL", DEADLINE,
                         "database broken: the only site down (SERVFAIL fallback)")
                log = srv.log_tail(400)
                assert "site lb DOWN" in log and "dbcheck" in log, log
            finally:
                os.chmod(site.db_path, 0o644)
            expect(srv, [site], "database back")
            for w in site.webs:
                w.stop()
            wait_for(lambda: answers(srv, "A") == "SERVFAIL", DEADLINE, "web tier down")
            log = srv.log_tail(60)
            assert "site lb DOWN" in log and "0/2" in log, log
        finally:
            assert srv.stop() == 0
    finally:
        site.stop()


def test_log_has_reasons(ms):
    """Every transition was logged with its reasons (runs last in this module)."""
    log = ms.log_tail(2000)
    assert "site eu DOWN" in log and "site eu UP" in log, log
    assert "site us DOWN" in log and "site us UP" in log, log
    assert "name app.example.com. now answers: us" in log, log
