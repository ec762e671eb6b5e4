"""Locality ordering end to end (issue 4, ordering policies): a real multisited with subnet
maps (regions:) and a GeoIP2-format database built here with Debian's
libmaxmind-db-writer-perl, queried with dnspython over UDP with and without the EDNS Client
Subnet option (RFC 7871).

Checked: the nearest/preferred site first and the ECS scope in the reply (subnet map: the
matched prefix, or longer where the map holds more specific entries; GeoIP: the database
network's prefix; names that do not depend on the client: 0); the packet's source address
when there is no ECS (127.0.0.0/8 is a region here); ECS source prefix 0 means no locality;
malformed ECS is FORMERR; a weighted name's first-site shares over 2,000 queries; and the
response-time order through the real probe path (three real HTTP servers with different
delays). Load ordering needs HAProxy sessions and is covered by tests/unit/test_policy.c.
"""

import http.server
import math
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import (MULTISITED, ZONES, Server, _start_with_retry, have_ipv6_loopback,
                      ms_config, wait_for)

PERL = "/usr/bin/perl"
MMDBLOOKUP = "/usr/bin/mmdblookup"
DEADLINE = 20.0

# The sites: answer address (A, AAAA) and location.
SITES = {
    "eu": ("192.0.2.10", "2001:db8::10", "52.5,13.4"),     # Berlin
    "us": ("192.0.2.20", "2001:db8::20", "40.7,-74.0"),    # New York
    "ap": ("192.0.2.30", "2001:db8::30", "35.7,139.7"),    # Tokyo
}
ADDR = {v[0]: k for k, v in SITES.items()}
# Web server probe delays, so that the response-time order is known: us < ap < eu.
DELAY = {"eu": 0.150, "us": 0.0, "ap": 0.060}

# GeoIP2-City records: network -> (country, continent, lat, lon).
GEO = {
    "198.51.100.0/24": ("DE", "EU", 52.5, 13.4),
    "203.0.113.0/24": ("US", "NA", 40.7, -74.0),
    "192.0.2.0/25": ("JP", "AS", 35.7, 139.7),
    "192.0.2.128/25": ("NA", "AF", -22.56, 17.08),  # Namibia: country code NA, in Africa
    "100.64.0.0/16": ("DE", "EU", 52.5, 13.4),
    "2001:db8:5000::/48": ("FR", "EU", 48.9, 2.35),
    "2001:db8:6000::/48": ("US", "NA", 40.7, -74.0),
    "2001:db8:7000::/48": ("CA", "NA", 43.7, -79.4),  # Canada: geoip.countries sends it to asia
}

PERL_SCRIPT = r"""
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;
my ($out, $ipv, @recs) = @ARGV;
my %types = (
    country => 'map', continent => 'map', location => 'map',
    iso_code => 'utf8_string', code => 'utf8_string',
    latitude => 'double', longitude => 'double',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version => $ipv, record_size => 24, database_type => 'GeoIP2-City',
    languages => ['en'], description => { en => 'multisite locality test' },
    remove_reserved_networks => 0,     # our networks are documentation ranges
    map_key_type_callback => sub { $types{ $_[0] } },
);
for my $r (@recs) {
    my ($net, $cc, $cont, $lat, $lon) = split /,/, $r;
    $tree->insert_network($net, {
        country => { iso_code => $cc }, continent => { code => $cont },
        location => { latitude => $lat + 0.0, longitude => $lon + 0.0 } });
}
open my $fh, '>:raw', $out or die "$out: $!";
$tree->write_tree($fh);
close $fh or die;
"""


def build_mmdb(path, geo=None, ip_version=6):
    script = path + ".pl"
    with open(script, "w") as f:
        f.write(PERL_SCRIPT)
    args = [f"{n},{cc},{ct},{lat},{lon}" for n, (cc, ct, lat, lon) in (geo or GEO).items()]
    p = subprocess.run([PERL, script, path, str(ip_version)] + args, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, f"building the GeoIP database failed (libmaxmind-db-writer-perl, " \
                              f"scripts/deps.sh):\n{p.stderr}"
    # The fixture itself, read back with libmaxminddb's own tool (the library we link).
    p = subprocess.run([MMDBLOOKUP, "--file", path, "--ip", "198.51.100.7", "country",
                        "iso_code"], capture_output=True, text=True, timeout=10)
    want = (geo or GEO)["198.51.100.0/24"][0]
    assert p.returncode == 0 and f'"{want}"' in p.stdout, f"mmdblookup: {p.stdout}{p.stderr}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(self.server.delay)
        body = b"ok\n"
        self.send_response(getattr(self.server, "status", 200))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class WebServer:
    """A real HTTP server on a free loopback port, in a thread of the test process."""

    def __init__(self, delay):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.delay = delay
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ms_yaml(web, mmdb):
    sites = "".join(
        f"  - name: {n}\n"
        f"    addresses: [{a4}, \"{a6}\"]\n"
        f"    location: \"{loc}\"\n"
        f"    web-servers: [127.0.0.1:{web[n].port}]\n"
        "    web-check: {interval: 200ms, timeout: 1s, rise: 1, fall: 2}\n"
        for n, (a4, a6, loc) in SITES.items())
    return (
        "sites:\n" + sites +
        "regions:\n"
        "  - name: europe\n"
        "    subnets: [10.1.0.0/16, \"2001:db8:1::/48\"]\n"
        "    prefer: [eu, ap, us]\n"
        "  - name: america\n"
        "    subnets: [10.2.0.0/16, 198.51.100.128/25, \"2001:db8:2::/48\"]\n"
        "    prefer: [us, eu, ap]\n"
        "  - name: asia\n"
        "    subnets: [10.3.0.0/16, 10.1.128.0/17]\n"
        "    prefer: [ap, eu, us]\n"
        "  - name: local\n"
        "    subnets: [127.0.0.0/8]\n"
        "    prefer: [ap, us, eu]\n"
        "geoip:\n"
        f"  database: {mmdb}\n"
        "  regions: {DE: europe, NA: america}\n"
        "  countries: {CA: asia}\n"
        "names:\n"
        "  - name: geo.example.com\n"
        "    sites: [eu, us, ap]\n"
        "    order: [locality]\n"
        "  - name: plain.example.com\n"
        "    sites: [eu, us, ap]\n"
        "  - name: wtd.example.com\n"
        "    sites: [eu, us, ap]\n"
        "    order: [weighted]\n"
        "    weights: [2, 1, 1]\n"
        "  - name: rtt.example.com\n"
        "    sites: [eu, us, ap]\n"
        "    order: [rtt]\n"
        "    rtt-tolerance: 50ms\n"
    )


@pytest.fixture(scope="module")
def v6():
    return have_ipv6_loopback()


@pytest.fixture(scope="module")
def env(workdir, v6):
    d = tempfile.mkdtemp(prefix="locality-", dir=workdir)
    mmdb = os.path.join(d, "test-city.mmdb")
    build_mmdb(mmdb)
    web = {n: WebServer(DELAY[n]) for n in SITES}
    srv = None
    try:
        def make(port):
            sd = tempfile.mkdtemp(prefix="ms-", dir=d)
            conf = os.path.join(sd, "multisited.yaml")
            with open(conf, "w") as f:
                f.write(ms_config(port, ZONES, v6=v6) + ms_yaml(web, mmdb))
            addrs = ["127.0.0.1", "::1"] if v6 else ["127.0.0.1"]
            return Server("multisited", [MULTISITED, "-c", conf], port, sd, addrs)
        srv = _start_with_retry(make)
        # Every site up (its web server answers): the static name lists all three.
        want = [SITES[n][0] for n in ("eu", "us", "ap")]
        wait_for(lambda: first_order(srv, "plain.example.com.") == want, DEADLINE,
                 "every site up")
        yield srv, web, mmdb
    finally:
        if srv:
            rc = srv.stop()
            assert rc == 0, f"multisited exited {rc}:\n{srv.log_tail()}"
        for w in web.values():
            w.stop()


def query(srv, name, rdtype="A", ecs=None, options=None, edns=True, addr=None):
    """ecs: "PREFIX/LEN" (a well-formed ECSOption); options: raw EDNS options instead."""
    opts = list(options or [])
    if ecs:
        a, ln = ecs.split("/")
        opts.append(dns.edns.ECSOption(a, int(ln)))
    if edns or opts:
        q = dns.message.make_query(name, rdtype, use_edns=0, options=opts)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    return dns.query.udp(q, addr or srv.addr, port=srv.port, timeout=2)


def addrs(r):
    return [rd.address for rrset in r.answer for rd in rrset]


def first_order(srv, name, **kw):
    r = query(srv, name, **kw)
    return addrs(r) if r.rcode() == dns.rcode.NOERROR else dns.rcode.to_text(r.rcode())


def ecs_of(r):
    for o in r.options:
        if o.otype == dns.edns.OptionType.ECS:
            return o
    return None


def order_of(*sites):
    return [SITES[s][0] for s in sites]


# (ECS prefix, expected site order, expected scope, what)
ECS_CASES = [
    # subnet maps
    ("10.1.0.0/16", ("eu", "ap", "us"), 17,
     "subnet europe /16, with asia's /17 below it: scope 17 (the deepest entry below)"),
    ("10.1.2.3/32", ("eu", "ap", "us"), 17,
     "subnet europe, outside asia's 10.1.128/17: scope 17 (a /16 would cover the /17)"),
    ("10.1.200.0/24", ("ap", "eu", "us"), 17, "nested: asia /17 inside europe /16"),
    ("10.4.0.0/16", ("eu", "us", "ap"), 14,
     "no region, leaves the subnet trie after bit 13: scope 14 (a /13 would cover 10.1/16)"),
    ("10.2.3.0/24", ("us", "eu", "ap"), 16, "subnet america: scope 16"),
    ("10.3.0.0/16", ("ap", "eu", "us"), 16, "subnet asia"),
    ("2001:db8:1::/48", ("eu", "ap", "us"), 48, "v6 subnet europe /48"),
    ("2001:db8:2:abcd::/64", ("us", "eu", "ap"), 48, "v6 subnet america, /64 source"),
    ("198.51.100.128/25", ("us", "eu", "ap"), 25,
     "subnet map beats GeoIP (america /25 inside the DE /24)"),
    ("10.0.0.0/8", ("eu", "us", "ap"), 17,
     "source /8 above the /16 and /17 entries: no region, scope 17 (the deepest below)"),
    # GeoIP
    ("198.51.100.0/25", ("eu", "ap", "us"), 25, "GeoIP DE -> europe (country code)"),
    ("198.51.100.0/24", ("eu", "ap", "us"), 25,
     "GeoIP DE /24, but the subnet map splits it: scope 25"),
    ("203.0.113.0/24", ("us", "eu", "ap"), 24,
     "GeoIP US: no country mapping, continent NA -> america; scope 24"),
    ("192.0.2.0/25", ("ap", "eu", "us"), 25,
     "GeoIP JP/AS unmapped: nearest site by location (Tokyo), then by distance"),
    ("192.0.2.0/24", ("ap", "eu", "us"), 25,
     "source /24 shorter than the GeoIP /25: scope 25"),
    ("100.64.5.0/24", ("eu", "ap", "us"), 16,
     "GeoIP network /16 holds the whole source /24: scope 16 (the network's prefix)"),
    ("2001:db8:5000::/48", ("eu", "us", "ap"), 48,
     "v6 GeoIP FR/EU unmapped: nearest site eu (Paris-Berlin), then us, ap"),
    ("2001:db8:6000:1::/64", ("us", "eu", "ap"), 48, "v6 GeoIP US -> america, scope 48"),
    ("2001:db8:7000::/56", ("ap", "eu", "us"), 48,
     "v6 GeoIP CA: geoip.countries (asia) beats the continent NA (america)"),
    ("100.100.0.0/16", ("eu", "us", "ap"), 11,
     "nowhere: configured order; scope 11 (the GeoIP tree's empty /11)"),
]


@pytest.mark.parametrize("prefix,order,scope,what", ECS_CASES,
                         ids=[c[0] for c in ECS_CASES])
def test_ecs_locality(env, prefix, order, scope, what):
    srv = env[0]
    r = query(srv, "geo.example.com.", ecs=prefix)
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    got = addrs(r)
    o = ecs_of(r)
    a, ln = prefix.split("/")
    assert o is not None, f"{what}: no ECS option in the reply"
    assert (o.srclen, dns.inet.inet_pton(dns.inet.af_for_address(o.address), o.address)) == \
        (int(ln), dns.inet.inet_pton(dns.inet.af_for_address(a), a)), \
        f"{what}: ECS not echoed: {o.address}/{o.srclen}"
    assert (got, o.scopelen) == (order_of(*order), scope), \
        f"{what}: got {[ADDR.get(x, x) for x in got]} scope {o.scopelen}, " \
        f"expected {list(order)} scope {scope}"


def test_geoip_country_code_not_taken_for_continent(env):
    """geoip.regions 'NA: america' means the continent North America (as in
    examples/cluster-eu.yaml: continent codes in geoip.regions are continents); Namibia's
    country code is also NA. A Namibian client (continent AF, unmapped)
    must not be sent to america: nearest site by location is eu (Windhoek-Berlin)."""
    r = query(env[0], "geo.example.com.", ecs="192.0.2.128/25")
    got = [ADDR.get(x, x) for x in addrs(r)]
    assert got == ["eu", "us", "ap"], f"Namibia (NA/AF) answered {got}"


def test_tcp_same_as_udp(env):
    """The same ECS query over TCP: same order, same scope."""
    srv = env[0]
    for prefix in ("10.1.200.0/24", "203.0.113.0/24", "2001:db8:5000::/48"):
        q = dns.message.make_query("geo.example.com.", "A", use_edns=0,
                                   options=[dns.edns.ECSOption(*_split(prefix))])
        rt = dns.query.tcp(q, srv.addr, port=srv.port, timeout=2)
        ru = query(srv, "geo.example.com.", ecs=prefix)
        assert (addrs(rt), ecs_of(rt).scopelen) == (addrs(ru), ecs_of(ru).scopelen), prefix


def _split(prefix):
    a, ln = prefix.split("/")
    return a, int(ln)


def test_many_clients_in_parallel(env):
    """3,000 ECS queries for distinct /32 clients, from 6 threads at once, in a shuffled mix
    of GeoIP networks and subnet-map entries: every answer has the right order and scope.
    This drives the per-thread GeoIP caches (1,024 entries each) through many evictions and
    hash collisions."""
    import random
    from concurrent.futures import ThreadPoolExecutor
    srv = env[0]
    rnd = random.Random(7)
    cases = []
    for _ in range(3000):
        k = rnd.randrange(5)
        x, y = rnd.randrange(256), rnd.randrange(256)
        if k == 0:
            cases.append((f"203.0.113.{x}", ("us", "eu", "ap"), 24))
        elif k == 1:
            cases.append((f"192.0.2.{x}", ("ap", "eu", "us") if x < 128 else ("eu", "us", "ap"),
                          25))
        elif k == 2:
            cases.append((f"100.64.{y}.{x}", ("eu", "ap", "us"), 16))
        elif k == 3:
            cases.append((f"10.1.{y}.{x}", ("eu", "ap", "us") if y < 128 else ("ap", "eu", "us"),
                          17))
        else:
            cases.append((f"2001:db8:6000:{y:x}::{x:x}", ("us", "eu", "ap"), 48))

    def run(chunk):
        bad = []
        for addr, order, scope in chunk:
            plen = 128 if ":" in addr else 32
            r = query(srv, "geo.example.com.", ecs=f"{addr}/{plen}")
            o = ecs_of(r)
            if addrs(r) != order_of(*order) or o is None or o.scopelen != scope:
                bad.append((addr, [ADDR.get(a, a) for a in addrs(r)], o and o.scopelen))
        return bad

    with ThreadPoolExecutor(6) as ex:
        bad = [b for res in ex.map(run, [cases[i::6] for i in range(6)]) for b in res]
    assert not bad, f"{len(bad)} wrong answers, e.g. {bad[:5]}"


def test_aaaa_follows_the_same_order(env):
    r = query(env[0], "geo.example.com.", "AAAA", ecs="10.2.0.0/16")
    assert addrs(r) == [SITES[s][1] for s in ("us", "eu", "ap")]
    assert ecs_of(r).scopelen == 16


def test_client_address_without_ecs(env, v6):
    srv = env[0]
    # 127.0.0.1 is in region "local": ap, us, eu; no ECS in, none out.
    for edns in (False, True):
        r = query(srv, "geo.example.com.", edns=edns)
        assert addrs(r) == order_of("ap", "us", "eu"), f"edns={edns}: {addrs(r)}"
        assert ecs_of(r) is None
    if v6:
        # ::1 is in no region and not in the GeoIP data: configured order.
        r = query(srv, "geo.example.com.", addr="::1")
        assert addrs(r) == order_of("eu", "us", "ap"), addrs(r)


def test_ecs_source_zero_means_no_locality(env):
    srv = env[0]
    for prefix in ("0.0.0.0/0", "::/0"):
        r = query(srv, "geo.example.com.", ecs=prefix)
        # Not the client address (127.0.0.1 -> local) either: the resolver said "none".
        assert addrs(r) == order_of("eu", "us", "ap"), f"{prefix}: {addrs(r)}"
        o = ecs_of(r)
        assert o is not None and o.srclen == 0 and o.scopelen == 0


@pytest.mark.parametrize("name", ["plain.example.com.", "wtd.example.com.",
                                  "rtt.example.com.", "www.example.com.", "nx.example.com."])
def test_scope_zero_when_not_client_dependent(env, name):
    r = query(env[0], name, ecs="10.2.0.0/16")
    o = ecs_of(r)
    assert o is not None and o.srclen == 16 and o.scopelen == 0, \
        f"{name}: {o and (o.srclen, o.scopelen)}"


# Raw ECS option payloads: family, source, scope, address bytes.
def _ecs(family, src, scope, addr):
    return dns.edns.GenericOption(8, family.to_bytes(2, "big") + bytes([src, scope]) + addr)


BAD_ECS = [
    ("family 3", _ecs(3, 24, 0, bytes([10, 2, 0]))),
    ("family 0", _ecs(0, 0, 0, b"")),
    ("v4 source 33", _ecs(1, 33, 0, bytes([10, 2, 0, 0, 0]))),
    ("v6 source 129", _ecs(2, 129, 0, bytes(17))),
    ("scope non-zero", _ecs(1, 24, 16, bytes([10, 2, 0]))),
    ("address too long", _ecs(1, 24, 0, bytes([10, 2, 0, 0]))),
    ("address too short", _ecs(1, 24, 0, bytes([10, 2]))),
    ("v6 address too short", _ecs(2, 64, 0, bytes(7))),
    ("bits beyond the prefix", _ecs(1, 23, 0, bytes([10, 2, 1]))),
    ("v6 bits beyond the prefix", _ecs(2, 47, 0, bytes([0x20, 1, 0x0d, 0xb8, 0, 3]))),
    ("option shorter than 4 bytes", dns.edns.GenericOption(8, bytes([0, 1, 24]))),
]


@pytest.mark.parametrize("what,opt", BAD_ECS, ids=[b[0] for b in BAD_ECS])
def test_malformed_ecs_formerr(env, what, opt):
    r = query(env[0], "geo.example.com.", options=[opt])
    assert r.rcode() == dns.rcode.FORMERR, f"{what}: {dns.rcode.to_text(r.rcode())}"
    assert not r.answer


def test_weighted_shares(env):
    """weights 2:1:1 -> first site eu 1/2, us 1/4, ap 1/4; 2,000 queries, each share within
    5 standard deviations of the binomial (false failure odds below 1e-6)."""
    srv = env[0]
    n = 2000
    want = {"eu": 0.5, "us": 0.25, "ap": 0.25}
    first = Counter()
    q = dns.message.make_query("wtd.example.com.", "A")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(n):
            r = dns.query.udp(q, srv.addr, port=srv.port, timeout=2, sock=sock)
            got = addrs(r)
            assert sorted(got) == sorted(order_of("eu", "us", "ap")), got
            first[ADDR[got[0]]] += 1
    finally:
        sock.close()
    for s, p in want.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(first[s] - n * p) <= 5 * sd, f"{s}: {first[s]} of {n}, expected {n * p}"


def test_rtt_order_through_probes(env):
    """rtt-tolerance 50ms; web servers answer after eu 150ms, ap 60ms, us 0: bands eu 3,
    ap 1, us 0 -> us, ap, eu (the configured order is eu, us, ap)."""
    srv = env[0]
    want = order_of("us", "ap", "eu")
    wait_for(lambda: first_order(srv, "rtt.example.com.") == want, DEADLINE,
             f"rtt order us, ap, eu (now {first_order(srv, 'rtt.example.com.')})")
    # ... and it stays so (the EWMA keeps each site in its band).
    for _ in range(20):
        assert first_order(srv, "rtt.example.com.") == want
        time.sleep(0.05)


def test_rtt_order_follows_changes(env):
    """Response times change: eu becomes fast (0 ms), us slow (150 ms), ap stays at 60 ms.
    The EWMA (0.3 per probe, a probe every 200 ms) crosses the 50 ms bands within about two
    seconds; the answer must follow: eu, ap, us. Nothing else about the sites changes."""
    srv, web = env[0], env[1]
    want_before = order_of("us", "ap", "eu")
    wait_for(lambda: first_order(srv, "rtt.example.com.") == want_before, DEADLINE,
             "the initial rtt order us, ap, eu")
    try:
        web["eu"].httpd.delay, web["us"].httpd.delay = 0.0, 0.150
        want = order_of("eu", "ap", "us")
        wait_for(lambda: first_order(srv, "rtt.example.com.") == want, DEADLINE,
                 f"rtt order eu, ap, us after the delays changed (now "
                 f"{[ADDR.get(x, x) for x in first_order(srv, 'rtt.example.com.')]})")
    finally:
        web["eu"].httpd.delay, web["us"].httpd.delay = DELAY["eu"], DELAY["us"]


def test_bad_geoip_database_refused(workdir):
    """A file that is not a MaxMind DB: the config check fails naming geoip.database."""
    d = tempfile.mkdtemp(prefix="badgeo-", dir=workdir)
    bad = os.path.join(d, "bad.mmdb")
    with open(bad, "wb") as f:
        f.write(b"not a maxmind database\n" * 10)
    web = {n: type("W", (), {"port": 9})() for n in SITES}
    conf = os.path.join(d, "multisited.yaml")
    with open(conf, "w") as f:
        f.write(ms_config(1, ZONES, v6=False) + ms_yaml(web, bad))
    p = subprocess.run([MULTISITED, "-c", conf, "-t"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0 and "geoip.database" in (p.stdout + p.stderr), \
        f"rc {p.returncode}: {p.stdout}{p.stderr}"


def test_state_aware_ttl_through_probes(workdir):
    """B1 through the real path: while a site's probes are inside a fall (or rise) window,
    the name's answers carry ttl-min; once the verdict settles, ttl again. Site b's web server
    answers 500 (a failure at each probe, not a refusal, which is confirmed at once), then 200
    again. fall 4 / rise 3 at 300 ms make each window about a second; we poll every 20 ms."""
    web = {n: WebServer(0.0) for n in ("a", "b")}
    srv = None
    name = "ttl.example.com."
    try:
        def make(port):
            sd = tempfile.mkdtemp(prefix="ms-ttl-", dir=workdir)
            conf = os.path.join(sd, "multisited.yaml")
            sites = "".join(
                f"  - name: {n}\n    addresses: [{a}]\n"
                f"    web-servers: [127.0.0.1:{web[n].port}]\n"
                "    web-check: {interval: 300ms, timeout: 1s, rise: 3, fall: 4}\n"
                for n, a in (("a", "192.0.2.1"), ("b", "192.0.2.2")))
            with open(conf, "w") as f:
                f.write(ms_config(port, ZONES, v6=False) + "sites:\n" + sites +
                        "names:\n  - name: ttl.example.com\n    sites: [a, b]\n"
                        "    ttl: 30\n    ttl-min: 3\n")
            return Server("multisited", [MULTISITED, "-c", conf], port, sd, ["127.0.0.1"])
        srv = _start_with_retry(make)

        def state():
            r = query(srv, name, edns=False)
            return addrs(r), (r.answer[0].ttl if r.answer else None)

        both, only_a = ["192.0.2.1", "192.0.2.2"], ["192.0.2.1"]
        wait_for(lambda: state() == (both, 30), DEADLINE, f"a, b with ttl 30 (now {state()})")
        web["b"].httpd.status = 500
        wait_for(lambda: state() == (both, 3), DEADLINE,
                 f"b failing, not yet down: ttl-min 3 (now {state()})", interval=0.02)
        wait_for(lambda: state() == (only_a, 30), DEADLINE,
                 f"b down, settled: a only, ttl 30 (now {state()})")
        web["b"].httpd.status = 200
        wait_for(lambda: state() == (only_a, 3), DEADLINE,
                 f"b rising, not yet up: ttl-min 3 (now {state()})", interval=0.02)
        wait_for(lambda: state() == (both, 30), DEADLINE,
                 f"b up again: a, b, ttl 30 (now {state()})")
    finally:
        if srv:
            rc = srv.stop()
            assert rc == 0, f"multisited exited {rc}:\n{srv.log_tail()}"
        for w in web.values():
            w.stop()


@pytest.mark.parametrize("geo,msg", [
    ("  continents: {XX: europe}\n", "geoip.continents"),
    ("  continents: {DE: europe}\n", "geoip.continents"),
    ("  countries: {NAM: europe}\n", "geoip.countries"),
    ("  countries: {DE: nowhere}\n", "geoip.countries"),
    ("  countries: {CA: asia}\n  regions: {D1: europe}\n", "geoip.regions"),
    ("  colour: blue\n", "geoip.colour"),
], ids=["continent XX", "continent DE", "country NAM", "unknown region", "code D1",
        "unknown key"])
def test_geoip_config_errors(workdir, geo, msg):
    """Bad geoip maps are refused at config check, naming the option."""
    d = tempfile.mkdtemp(prefix="geoconf-", dir=workdir)
    mmdb = os.path.join(d, "ok.mmdb")
    build_mmdb(mmdb)
    web = {n: type("W", (), {"port": 9})() for n in SITES}
    text = ms_config(1, ZONES, v6=False) + ms_yaml(web, mmdb)
    text = text.replace("  countries: {CA: asia}\n", geo)
    if "regions: {D1" in geo:
        text = text.replace("  regions: {DE: europe, NA: america}\n", "")
    conf = os.path.join(d, "multisited.yaml")
    with open(conf, "w") as f:
        f.write(text)
    p = subprocess.run([MULTISITED, "-c", conf, "-t"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0 and msg in (p.stdout + p.stderr), \
        f"rc {p.returncode}: {p.stdout}{p.stderr}"


def test_reload_new_geoip_database(workdir):
    """SIGHUP after the database file is replaced (atomically, as geoipupdate does): answers
    follow the new data at once; the per-thread GeoIP caches do not serve the old class."""
    d = tempfile.mkdtemp(prefix="georeload-", dir=workdir)
    mmdb = os.path.join(d, "city.mmdb")
    build_mmdb(mmdb)
    web = {n: WebServer(0.0) for n in SITES}
    srv = None
    try:
        def make(port):
            sd = tempfile.mkdtemp(prefix="ms-", dir=d)
            conf = os.path.join(sd, "multisited.yaml")
            with open(conf, "w") as f:
                f.write(ms_config(port, ZONES, v6=False) + ms_yaml(web, mmdb))
            return Server("multisited", [MULTISITED, "-c", conf], port, sd, ["127.0.0.1"])
        srv = _start_with_retry(make)
        europe, america = order_of("eu", "ap", "us"), order_of("us", "eu", "ap")
        # Fill every UDP thread's cache with the DE answer (many queries, many source ports).
        for _ in range(50):
            assert first_order(srv, "geo.example.com.", ecs="198.51.100.0/25") == europe
        new = dict(GEO)
        new["198.51.100.0/24"] = ("US", "NA", 40.7, -74.0)
        tmp = os.path.join(d, "city.mmdb.new")
        build_mmdb(tmp, new)
        os.rename(tmp, mmdb)
        srv.signal(signal.SIGHUP)
        wait_for(lambda: first_order(srv, "geo.example.com.", ecs="198.51.100.0/25") == america,
                 DEADLINE, "the new GeoIP data after SIGHUP")
        for _ in range(50):
            assert first_order(srv, "geo.example.com.", ecs="198.51.100.0/25") == america
        assert srv.alive()
    finally:
        if srv:
            rc = srv.stop()
            assert rc == 0, f"multisited exited {rc}:\n{srv.log_tail()}"
        for w in web.values():
            w.stop()


def test_ipv4_only_database(workdir):
    """A GeoIP database with ip_version 4 (no IPv6 tree): IPv4 clients are classified with
    the record's prefix as scope (no IPv4-in-IPv6 offset); IPv6 clients get class 0 and a
    reply, not an error."""
    d = tempfile.mkdtemp(prefix="geo4-", dir=workdir)
    mmdb = os.path.join(d, "v4.mmdb")
    build_mmdb(mmdb, {k: v for k, v in GEO.items() if ":" not in k}, ip_version=4)
    web = {n: WebServer(0.0) for n in SITES}
    srv = None
    try:
        def make(port):
            sd = tempfile.mkdtemp(prefix="ms-", dir=d)
            conf = os.path.join(sd, "multisited.yaml")
            with open(conf, "w") as f:
                f.write(ms_config(port, ZONES, v6=False) + ms_yaml(web, mmdb))
            return Server("multisited", [MULTISITED, "-c", conf], port, sd, ["127.0.0.1"])
        srv = _start_with_retry(make)
        for prefix, order, scope in [
                ("203.0.113.0/24", ("us", "eu", "ap"), 24),
                ("100.64.5.0/24", ("eu", "ap", "us"), 16),
                ("192.0.2.0/24", ("ap", "eu", "us"), 25),
                ("2001:db8:5000::/48", ("eu", "us", "ap"), None)]:
            r = query(srv, "geo.example.com.", ecs=prefix)
            assert r.rcode() == dns.rcode.NOERROR, prefix
            assert addrs(r) == order_of(*order), f"{prefix}: {addrs(r)}"
            if scope is not None:
                assert ecs_of(r).scopelen == scope, f"{prefix}: scope {ecs_of(r).scopelen}"
        assert srv.alive()
    finally:
        if srv:
            rc = srv.stop()
            assert rc == 0, f"multisited exited {rc}:\n{srv.log_tail()}"
        for w in web.values():
            w.stop()
