"""nginx in front of a load test's gunicorn: deploy/nginx/velro.conf under a private master.

    with NginxProxy(run_dir, upstream_port=stack.web.port) as proxy:
        proxy.port  # 127.0.0.1:<free port> -> gunicorn

Like velro/tests/test_nginx.py: Debian's nginx (`nginx -p <dir> -c <dir>/nginx.conf`,
`daemon off`), the site file with `listen 8000;` and `server web:8000;` pointed at a
free loopback port and the given upstream port; nothing else of the site changes,
except that `access_log_off=True` turns its access log off (one JSON line per
request written through a pipe costs CPU at thousands of requests a second; the
benchmark says so in its notes). The main context takes deploy/nginx/nginx.conf's
worker numbers (worker_processes, worker_rlimit_nofile, worker_connections,
multi_accept), so the benchmark runs what docker-compose.yml deploys.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from loadtest import BASE_DIR, LoadTestError
from loadtest.supervisor import HOST, PidRegistry, Process, free_port

SITE = BASE_DIR / "deploy" / "nginx" / "velro.conf"
MAIN = BASE_DIR / "deploy" / "nginx" / "nginx.conf"
LISTEN = "listen 8000;"
UPSTREAM = "server web:8000;"
ACCESS_LOG = re.compile(r"^(\s*)access_log\s+[^;]+;", re.MULTILINE)


class ProxyError(LoadTestError):
    """nginx is missing or would not start."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        raise ProxyError("nginx not found: apt-get install nginx-light (scripts/services.sh ensure_nginx)")
    return found


def main_directive(name: str, default: str) -> str:
    """A directive's value in deploy/nginx/nginx.conf (e.g. worker_connections)."""
    match = re.search(rf"^\s*{name}\s+([^;]+);", MAIN.read_text(), re.MULTILINE)
    return match.group(1).strip() if match else default


def site_config(listen_port: int, upstream_port: int, *, access_log_off: bool) -> str:
    text = SITE.read_text()
    for old, new in ((LISTEN, f"listen {HOST}:{listen_port};"), (UPSTREAM, f"server {HOST}:{upstream_port};")):
        text, count = re.subn(rf"^(\s*){re.escape(old)}", rf"\g<1>{new}", text, flags=re.MULTILINE)
        if count != 1:
            raise ProxyError(f"{SITE} should have the directive {old!r} exactly once")
    if access_log_off:
        text = ACCESS_LOG.sub(r"\g<1>access_log off;", text)
    return text


def main_config(directory: Path, *, main: str, events: str, error_log: str, http: str = "") -> str:
    """A private master's nginx.conf around the site file `directory`/velro.conf:
    no daemon, pid, temp files and error log (stderr, at `error_log`) of its own;
    as root, workers stay root (the default `nobody` could not read a test's tmp)."""
    d = directory
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"daemon off;\nmaster_process on;\n{main}{user}"
        f"pid {d}/nginx.pid;\nerror_log stderr {error_log};\n"
        f"events {{ {events} }}\n"
        "http {\n"
        f"    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n"
        f"    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
        f"{http}"
        f"    include {d}/velro.conf;\n"
        "}\n"
    )


def nginx_argv(binary: str, directory: Path, *extra: str) -> list[str]:
    """nginx with `directory` as its prefix and its nginx.conf; errors to stderr."""
    return [binary, "-p", f"{directory}/", "-c", str(directory / "nginx.conf"), "-e", "stderr", *extra]


class NginxProxy:
    """The repository's nginx config under a private master on a free port; a context manager."""

    fresh_log = True  # the log file is emptied at start

    def __init__(self, directory: Path, upstream_port: int, *, access_log_off: bool = True) -> None:
        self.binary = nginx_binary()
        self.directory = Path(directory).resolve()
        self.port = free_port()
        self.upstream_port = upstream_port
        self.access_log_off = access_log_off
        self.log_path = self.directory / "nginx.log"
        self.process: Process | None = None
        self.pids = PidRegistry(self.directory / "nginx-pids.json")
        self.settings = {
            "worker_processes": main_directive("worker_processes", "auto"),
            "worker_rlimit_nofile": main_directive("worker_rlimit_nofile", "20000"),
            "worker_connections": main_directive("worker_connections", "12288"),
            "multi_accept": main_directive("multi_accept", "off"),
            "access_log": "off" if access_log_off else "on",
        }

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def write_config(self) -> Path:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "velro.conf").write_text(site_config(self.port, self.upstream_port, access_log_off=self.access_log_off))
        s = self.settings
        main = main_config(
            d,
            main=f"worker_processes {s['worker_processes']};\nworker_rlimit_nofile {s['worker_rlimit_nofile']};\n",
            events=f"worker_connections {s['worker_connections']}; multi_accept {s['multi_accept']};",
            error_log="warn",
            http="    tcp_nodelay on;\n",
        )
        (d / "nginx.conf").write_text(main)
        return d / "nginx.conf"

    def argv(self, *extra: str) -> list[str]:
        return nginx_argv(self.binary, self.directory, *extra)

    def start(self) -> NginxProxy:
        self.pids.reap_stale()
        self.write_config()
        check = subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise ProxyError(f"nginx -t refused the config:\n{check.stderr}")
        self.process = Process(
            "nginx",
            self.argv(),
            env=dict(os.environ),
            log_path=self.log_path,
            banner=False,
            fresh_log=self.fresh_log,
            registry=self.pids,
        )
        self.process.start()
        try:
            self.process.wait_until(self._answers, timeout=20, what="nginx to accept connections")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
        self.pids.clear()

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
