"""The rendered proxy config under real nginx (issue 26, items 8 and 13): paths with spaces, `;`, braces
and `#` stay paths, and the proxy forwards nothing but plain `/v1/fleet/<call>` paths to the SuperLink.

A tiny HTTPS backend on loopback (with the deployment's own server certificate, as the SuperLink has)
stands for the SuperLink and records every path that reaches it; nginx is the Debian package, run as a
private instance from `genfl-certs nginx --standalone`. Fast (about a second): no Flower involved.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from genfl_cli.certs import main

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install -y nginx; .ci/run does it)")

# Folder names a user may well have, and ones that would inject directives into an unquoted config.
AWKWARD = ["my deploy", "a;b", "x; worker_processes 4; #", "braces {here}"]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _client_host() -> str:
    """A loopback source address that is not nginx's own 127.0.0.1, so the access log can be seen to name
    the client (Linux answers all of 127.0.0.0/8); 127.0.0.1 where it cannot be bound."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.3", 0))
        return "127.0.0.3"
    except OSError:
        return "127.0.0.1"


def _render(root: Path, listen: str, superlink_port: int = 9093) -> Path:
    assert main(["tls", "--out", str(root / "certs"), "--san", "127.0.0.2"]) == 0
    prefix = root / "nginx"
    assert main(["nginx", "--certs", str(root / "certs"), "--out", str(prefix / "genfl-fleet.conf"), "--listen", listen,
                 "--superlink-port", str(superlink_port), "--standalone", str(prefix)]) == 0
    return prefix


@pytest.mark.parametrize("folder", AWKWARD)
def test_paths_with_spaces_and_semicolons_pass_nginx_t(tmp_path, folder):
    root = tmp_path / folder
    prefix = _render(root, f"127.0.0.1:{_free_port()}")
    proc = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=60)
    # nginx -t loads the certificate files and refuses a duplicate worker_processes: it passes only if
    # each path reached nginx whole, without ending its directive or starting another
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("folder", ["price$5", 'say "hi"', "back\\slash", "new\nline", "glob[1]"])
def test_paths_nginx_cannot_take_are_refused_with_the_reason(tmp_path, capsys, folder):
    assert main(["tls", "--out", str(tmp_path / "certs"), "--san", "127.0.0.2"]) == 0
    assert main(["nginx", "--certs", str(tmp_path / "certs"), "--out", str(tmp_path / "site.conf"),
                 "--standalone", str(tmp_path / folder)]) == 2
    err = capsys.readouterr().err
    assert "--standalone" in err and "nginx cannot be given a path containing" in err
    assert not (tmp_path / folder / "nginx.conf").exists()


def test_a_san_that_is_not_a_host_name_is_refused(tmp_path, capsys):
    assert main(["tls", "--out", str(tmp_path), "--san", "gpu.lan; return 200"]) == 2
    assert "not an IP address or a host name" in capsys.readouterr().err


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str]] = []

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.command, self.path, self.client_address[0]))
        body = b"backend"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy(tmp_path, request):
    """nginx from `genfl-certs nginx --standalone` (in the folder ``request.param``, default `srv`) in front
    of the recording HTTPS backend; yields (nginx port, prefix, the backend's record, ca.crt)."""
    root = tmp_path / getattr(request, "param", "srv")
    backend_port, port = _free_port(), _free_port()
    prefix = _render(root, f"127.0.0.1:{port}", superlink_port=backend_port)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(root / "certs" / "server.pem", root / "certs" / "server.key")
    seen: list[tuple[str, str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", backend_port), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"),
                              "-g", "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert nginx.poll() is None, nginx.stdout.read()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not listen within 30 s"
            time.sleep(0.1)
        yield port, prefix, seen, root / "certs" / "ca.crt"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=20)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(timeout=10)
        server.shutdown()
        server.server_close()


def _call(port: int, cafile: Path, method: str, path: str, source: str = "127.0.0.1") -> int:
    """One request with ``path`` sent exactly as given (http.client neither decodes nor normalizes it)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, source_address=(source, 0),
                                       context=ssl.create_default_context(cafile=str(cafile)))
    try:
        conn.request(method, path, body=b"", headers={"content-type": "application/protobuf"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.parametrize("path", [
    "/v1/fleet%2fcontrol/list-runs", "/v1/fleet%2Fcontrol/list-runs", "/v1/fleet/pull-messages%2f..%2fx",
    "/v1/fleet/x/../pull-messages", "/v1/fleet/./pull-messages", "/v1/fleet/pull-messages/.",
    "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet/..%2fcontrol/list-runs",
    "/v1/fleet/pull-messages%5c..", "/v1/fleet//pull-messages", "/v1/fleet/pull-messages?next=/v1/control",
])
def test_encoded_slashes_and_dot_segments_never_reach_the_superlink(proxy, path):
    port, prefix, seen, ca = proxy
    status = _call(port, ca, "POST", path)
    assert status in (400, 403, 404), (path, status)
    assert seen == [], f"{path} was forwarded as {seen}"


@pytest.mark.parametrize("proxy", ["srv", "srv a;b {c}"], indirect=True)
def test_plain_fleet_calls_are_forwarded_and_the_access_log_names_the_box(proxy):
    port, prefix, seen, ca = proxy
    box = _client_host()
    assert _call(port, ca, "POST", "/v1/fleet/pull-messages", source=box) == 200
    assert _call(port, ca, "POST", "/v1/control/list-runs", source=box) == 403
    assert _call(port, ca, "GET", "/v1/fleet/get-run", source=box) == 403
    assert seen == [("POST", "/v1/fleet/pull-messages", "127.0.0.1")]  # the SuperLink sees only the proxy
    deadline = time.monotonic() + 10  # nginx writes the log line after the response
    while len((prefix / "access.log").read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = (prefix / "access.log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == [box] * 3, lines
    assert '"POST /v1/fleet/pull-messages HTTP/1.1" 200' in lines[0]
    assert (prefix / "nginx.pid").is_file()  # the pid directive kept the whole path (a space and `;` in one case)
