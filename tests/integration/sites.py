"""sites.py: a site of real parts for the integration tests and benchmarks: two or more
multisite-webapp instances on the site's database (SQLite or PostgreSQL), HAProxy in front of
them with its runtime API on a unix socket, and the multisited config that describes it.

HAProxy's own health check fetches the database page and expects the identity keyword
(`option httpchk` + `http-check expect string`), so its view covers the database too, as a
real site's load balancer does. Everything is started on free loopback ports and stopped by
the pid we hold.
"""

import os
import pwd
import shutil
import subprocess
import tempfile

from conftest import (BUILD, MULTISITED, ZONES, Server, free_port, ms_config, wait_for,
                      _start_with_retry)
from test_webapp import start_webapp, req, UNPRIV

HAPROXY = "/usr/sbin/haproxy"


class Haproxy(Server):
    def wait_ready(self, deadline=15.0):
        def ready():
            if not self.alive():
                raise AssertionError(f"haproxy exited {self.proc.returncode}:\n{self.log_tail()}")
            return os.path.exists(self.sock)
        wait_for(ready, deadline, "haproxy to open its stats socket")
        return self


def haproxy_config(port, sock, web, identity, lb_only=False):
    servers = "".join(f"    server {n} 127.0.0.1:{p} check\n" for n, p in web)
    # LB-only sites check the web tier on /health and the database on /db separately, so
    # the verdict can tell them apart; otherwise one backend checks /db for the keyword.
    web_check = "option httpchk GET /health\n" if lb_only else (
        f"option httpchk GET /db\n    http-check expect string {identity}\n")
    cfg = (
        "global\n"
        f"    stats socket {sock} mode 600 level admin\n"
        "    maxconn 2000\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 500ms\n"
        "    timeout client 10s\n"
        "    timeout server 10s\n"
        "    timeout check 500ms\n"
        "frontend fe\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend web\n"
        "backend web\n"
        f"    {web_check}"
        "    default-server inter 200ms fall 2 rise 2 maxconn 100\n"
        f"{servers}"
    )
    if lb_only:
        cfg += ("backend dbcheck\n"
                f"    option httpchk GET /db\n    http-check expect string {identity}\n"
                "    default-server inter 200ms fall 2 rise 2\n" + servers)
    return cfg


class Site:
    """One site: name, answer addresses, web apps, HAProxy, database."""

    def __init__(self, workdir, name, v4, v6, db_kind="sqlite", pg=None, n_web=2,
                 lb_only=False):
        self.workdir = workdir
        self.name = name
        self.v4, self.v6 = v4, v6
        self.identity = f"db-{name}-1"
        self.lb_only = lb_only
        self.dir = tempfile.mkdtemp(prefix=f"site-{name}-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.user = None
        if os.geteuid() == 0:
            self.user = UNPRIV
            pw = pwd.getpwnam(UNPRIV)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        if db_kind == "sqlite":
            self.db_path = os.path.join(self.dir, f"{name}.sqlite")
            self.db = f"sqlite:{self.db_path}"
        else:
            self.pg = pg
            self.db = pg.create_db(f"site_{name}")
            self.db_path = None
        self.webs = []
        for i in range(n_web):
            self.webs.append(self._start_web(i))
        self.sock = os.path.join(self.dir, "haproxy.sock")
        self.lb_port = free_port(v6=False)
        self.haproxy = None
        self.start_haproxy()

    def _start_web(self, i, port=None):
        w = start_webapp(self.workdir, f"{self.name}-web{i + 1}", self.name, self.db,
                         identity=self.identity, user=self.user if self.db_path else None)
        return w

    def restart_web(self, i):
        """Start web app i again on the port it had (HAProxy's config names that port)."""
        old = self.webs[i]
        argv = old.argv
        w = type(old)(old.name, argv, old.port, old.workdir, old.addrs)
        w.start()
        self.webs[i] = w.wait_ready()
        return self.webs[i]

    def start_haproxy(self):
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(self.lb_port, self.sock,
                                   [(w.name, w.port) for w in self.webs], self.identity,
                                   self.lb_only))
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.haproxy = Haproxy("haproxy", [HAPROXY, "-f", cfg, "-db"], self.lb_port, self.dir,
                               ["127.0.0.1"])
        self.haproxy.sock = self.sock
        self.haproxy.start()
        self.haproxy.wait_ready()

    def stop_haproxy(self):
        self.haproxy.stop()

    def conf(self, probes=True):
        """This site's entry under sites: in a multisited config."""
        lines = [f"  - name: {self.name}",
                 f"    addresses: [\"{self.v4}\", \"{self.v6}\"]"]
        if probes and not self.lb_only:
            lines += ["    web-servers:"]
            lines += [f"      - {{name: {w.name}, address: \"127.0.0.1:{w.port}\"}}"
                      for w in self.webs]
            lines += ["    web-check: {type: http, path: /health, expect: ok, interval: 500ms, "
                      "timeout: 400ms, rise: 2, fall: 2}",
                      "    database:",
                      f"      name: {self.identity}",
                      f"      url: http://127.0.0.1:{self.lb_port}/db",
                      "      interval: 500ms",
                      "      timeout: 400ms"]
        lines += ["    load-balancer:",
                  f"      stats: unix:{self.sock}",
                  "      web-backend: web",
                  "      interval: 250ms"]
        if self.lb_only:
            lines += ["      db-backend: dbcheck"]
        return "\n".join(lines) + "\n"

    def stop(self):
        for w in self.webs:
            if w.alive():
                w.stop()
        if self.haproxy and self.haproxy.alive():
            self.haproxy.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_multisited_with(workdir, extra_yaml, zones=None, prefix="ms-sites-"):
    """multisited on a free port with the generated test config plus `extra_yaml` (sites,
    names, ...) appended."""
    def make(port):
        d = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        conf = os.path.join(d, "multisited.yaml")
        with open(conf, "w") as f:
            f.write(ms_config(port, zones or ZONES, v6=False) + extra_yaml)
        return Server("multisited", [MULTISITED, "-c", conf], port, d, ["127.0.0.1"])
    return _start_with_retry(make)
