"""Packaging as admins expect: `make install` with PREFIX/DESTDIR lays out binaries, man
pages, systemd units and a config; the units pass `systemd-analyze verify`; multisited speaks
the sd_notify protocol (READY=1 once serving, RELOADING=1/READY=1 around a reload,
STOPPING=1) through a NOTIFY_SOCKET the test provides (this machine's PID 1 is not systemd).
"""

import os
import signal
import socket
import subprocess
import tempfile

from conftest import BUILD, MULTISITED, REPO, ZONES, Server, free_port, wait_for


def test_make_install_and_units_verify(workdir):
    prefix = tempfile.mkdtemp(prefix="inst-", dir=workdir)
    r = subprocess.run(["make", "-s", "-C", REPO, f"BUILD={BUILD}", "install",
                        f"PREFIX={prefix}", f"SYSCONFDIR={prefix}/etc"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ("sbin/multisited", "sbin/multisitectl", "share/man/man8/multisited.8",
              "share/man/man8/multisitectl.8", "share/man/man8/multisite-syncd.8",
              "share/man/man5/multisite.yaml.5", "lib/systemd/system/multisited.service",
              "lib/systemd/system/multisite-syncd.service", "etc/multisite/multisited.yaml"):
        assert os.path.exists(os.path.join(prefix, f)), f"{f} not installed"
    unit = os.path.join(prefix, "lib/systemd/system/multisited.service")
    text = open(unit).read()
    assert f"ExecStart={prefix}/sbin/multisited -c {prefix}/etc/multisite/multisited.yaml" in text
    assert "Type=notify" in text
    units = [unit]
    if os.path.exists(os.path.join(prefix, "sbin/multisite-syncd")):
        units.append(os.path.join(prefix, "lib/systemd/system/multisite-syncd.service"))
    env = dict(os.environ, MANPATH=os.path.join(prefix, "share/man"))
    r = subprocess.run(["systemd-analyze", "verify"] + units, capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["man", "-l", os.path.join(prefix, "share/man/man8/multisited.8")],
                       capture_output=True, text=True, env=dict(env, MANPAGER="cat", PAGER="cat"))
    assert r.returncode == 0 and "authoritative DNS" in r.stdout


def test_sd_notify(workdir):
    d = tempfile.mkdtemp(prefix="notify-", dir=workdir)
    path = os.path.join(d, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(path)
    ns.settimeout(15)
    port = free_port(v6=False)
    log = open(os.path.join(d, "ms.log"), "ab")
    p = subprocess.Popen([MULTISITED, "--zone", f"example.com={ZONES['example.com']}",
                          "--listen", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                         env=dict(os.environ, NOTIFY_SOCKET=path))
    try:
        msg = ns.recv(4096).decode()
        assert "READY=1" in msg and f"MAINPID={p.pid}" in msg, msg
        p.send_signal(signal.SIGHUP)
        assert ns.recv(4096).decode() == "RELOADING=1"
        assert "READY=1" in ns.recv(4096).decode()
        p.send_signal(signal.SIGTERM)
        assert ns.recv(4096).decode() == "STOPPING=1"
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        ns.close()
        log.close()
