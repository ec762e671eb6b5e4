"""pgutil.py: a throwaway PostgreSQL 15 cluster for the integration tests (web app, health,
sync): initdb into a fresh temporary directory, the postmaster on a free loopback port, stop
and start again on the same port and data (to break and restore "the site's database"), and
removal of everything at the end.

PostgreSQL refuses to run as root, so when the tests run as root every PostgreSQL program runs
as the `postgres` user (Debian's package creates it) through `setpriv`; the cluster directory
is made under /tmp (world-traversable) and handed to that user. The postmaster is started
directly (not through pg_ctl), so the pid we hold is the postmaster's own and stop() signals
exactly that pid. fsync is off: the cluster lives for one test run.

Usage:
    pg = PgCluster().start()
    conninfo = pg.create_db("webapp")     # "host=127.0.0.1 port=N user=postgres dbname=webapp"
    pg.stop(); pg.start()                  # same port, same data
    pg.destroy()                           # stop and remove the directory
or as a context manager: `with PgCluster() as pg: ...`.
"""

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import free_port, wait_for

PGBIN = os.environ.get("MS_PGBIN", "/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
START_DEADLINE = 30.0
STOP_DEADLINE = 20.0


def _as_pg():
    """The command prefix that runs a program as the postgres user ([] when not root)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups"]


class PgCluster:
    """One cluster: its directory, port, postmaster pid and log."""

    def __init__(self, port=None, base=None):
        assert os.access(os.path.join(PGBIN, "postgres"), os.X_OK), \
            f"{PGBIN}/postgres missing: run scripts/deps.sh (Debian postgresql)"
        self.dir = tempfile.mkdtemp(prefix="ms-pg-", dir=base or "/tmp")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.port = port or free_port(v6=False)
        self.proc = None
        self._log = None
        r = subprocess.run(_as_pg() + [os.path.join(PGBIN, "initdb"), "-D", self.data,
                                       "-U", PG_USER, "-A", "trust", "--no-sync",
                                       "--no-instructions", "-E", "UTF8", "--locale=C"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise AssertionError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def ready(self):
        r = subprocess.run([os.path.join(PGBIN, "pg_isready"), "-q", "-h", "127.0.0.1",
                            "-p", str(self.port), "-t", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def start(self):
        """Start the postmaster (loopback TCP only, unix socket in our directory) and wait
        until it accepts connections; fail with its log if it exits first."""
        assert not self.alive(), "already running"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            _as_pg() + [os.path.join(PGBIN, "postgres"), "-D", self.data,
                        "-p", str(self.port), "-k", self.dir,
                        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                        "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                        "-c", "max_connections=100"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def up():
            if not self.alive():
                raise AssertionError(f"postgres exited with {self.proc.returncode}; log:\n"
                                     f"{self.log_tail()}")
            return self.ready()
        try:
            wait_for(up, START_DEADLINE, f"postgres on port {self.port}", interval=0.05)
        except AssertionError:
            self.stop()  # by our pid, if it is still there
            raise
        return self

    def stop(self):
        """Fast shutdown of our postmaster by its pid (SIGINT: disconnect clients, exit);
        SIGQUIT then SIGKILL to the same pid if it does not go in time."""
        if self.proc is None:
            return None
        was_running = self.proc.poll() is None
        for sig, wait in ((signal.SIGINT, STOP_DEADLINE), (signal.SIGQUIT, 5),
                          (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        rc = self.proc.returncode
        self._log.close()
        self.proc = None
        if was_running:
            # The port is free once the postmaster is gone; wait until nothing answers on it.
            wait_for(lambda: not self.ready(), 5, f"port {self.port} to close")
        return rc

    def destroy(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def conninfo(self, dbname="postgres"):
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={dbname}"

    def uri(self, dbname="postgres"):
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql, dbname="postgres"):
        """Run sql with psql over TCP; returns its unaligned, tuples-only output."""
        r = subprocess.run([os.path.join(PGBIN, "psql"), "-h", "127.0.0.1",
                            "-p", str(self.port), "-U", PG_USER, "-d", dbname, "-X",
                            "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"psql failed: {sql!r}: {r.stderr.strip()}")
        return r.stdout

    def create_db(self, name):
        self.psql(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)


if __name__ == "__main__":
    # Smoke run: python3 tests/integration/pgutil.py
    with PgCluster() as pg:
        print(pg.psql("SELECT version()").strip())
        t = time.monotonic()
        pg.stop()
        pg.start()
        print(f"restart took {time.monotonic() - t:.2f}s")
