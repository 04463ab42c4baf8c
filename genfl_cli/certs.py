"""`genfl-certs`: TLS certificates for the SuperLink and authentication keys for SuperNodes.

    genfl-certs tls --out certificates --san 192.168.1.10 --san gpu-server.lan
        -> ca.crt (give it to every SuperNode and CLI), ca.key, server.pem, server.key (SuperLink only)
    genfl-certs node-key --out keys --name edge-0
        -> edge-0.key (stays on that edge box), edge-0.pub (registered with `flwr supernode register`)
    genfl-certs nginx --certs certificates
        -> certificates/genfl-fleet.conf: the nginx site that puts the SuperLink (on 127.0.0.1:9093) behind a proxy on port 9092 that
           forwards only the Fleet API to the boxes (template: genfl_cli/nginx/genfl-fleet.conf.template)

The server certificate is always also valid for 127.0.0.1 and localhost: the SuperLink's own
processes (SuperExec, ServerApp), the admin `flwr` CLI and the proxy all reach it there.

Needs only the `cryptography` package (which flwr itself depends on), so it also runs on an edge box as
`python genfl_cli/certs.py node-key ...`. Private keys are written owner-only and never overwritten
without --force; the repo git-ignores certificates/ and keys/ so they are never committed.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import shlex
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROG = "genfl-certs"
# The default layout (docs/deploy.md): boxes dial the proxy's port, the SuperLink listens on loopback only.
PROXY_PORT = 9092
SUPERLINK_PORT = 9093
LOOPBACK_SANS = ("127.0.0.1", "localhost")  # the SuperLink's own processes, the admin CLI and the proxy dial these
PROXY_MAX_BODY = "16m"  # SuperNodes push weights in chunks of at most 5 MiB; nginx's default limit is 1 MiB
NGINX_TEMPLATES = Path(__file__).resolve().parent / "nginx"


class CertError(ValueError):
    """Bad arguments or files in the way; the message says what to do."""


def _write(path: Path, data: bytes, secret: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CertError(f"{path} exists; pass --force to replace it (nodes holding the old files must get the new ones)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600 if secret else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls(out: Path, sans: list[str], days: int, force: bool = False) -> list[Path]:
    """A CA and a SuperLink certificate signed by it, valid for ``sans`` (the addresses nodes and the CLI dial)."""
    if not sans:
        raise CertError("give at least one --san: the IP address or host name SuperNodes and the flwr CLI use to reach the SuperLink")
    if days < 1:
        raise CertError(f"--days must be >= 1 (got {days})")
    for name in sans:
        if not (_is_ip(name) or _HOST_NAME.fullmatch(name)):
            raise CertError(f"--san {name!r}: not an IP address or a host name (letters, digits, '-' and '.')")
    sans = [*sans, *(name for name in LOOPBACK_SANS if name not in sans)]
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "GenFL deployment CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(name) for name in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = {
        "ca.crt": (ca_cert.public_bytes(serialization.Encoding.PEM), False),
        "ca.key": (_pem_key(ca_key), True),
        "server.pem": (server_cert.public_bytes(serialization.Encoding.PEM), False),
        "server.key": (_pem_key(server_key), True),
    }
    if not force:
        for name in files:
            if (out / name).exists():
                raise CertError(f"{out / name} exists; pass --force to replace it (nodes holding the old files must get the new ones)")
    for name, (data, secret) in files.items():
        _write(out / name, data, secret, force=True)
    return [out / name for name in files]


def make_node_key(out: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, the kind `flower-supernode --auth-supernode-private-key`
    and `flwr supernode register` read (Flower accepts NIST curves only)."""
    if not name or "/" in name or name.startswith("."):
        raise CertError(f"--name must be a plain file name such as edge-0 (got {name!r})")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode()
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    if not force and (private_path.exists() or public_path.exists()):
        raise CertError(f"{private_path} or {public_path} exists; pass --force to replace (a registered key must then be registered again)")
    _write(private_path, private, secret=True, force=True)
    _write(public_path, public, secret=False, force=True)
    return private_path, public_path


# Characters nginx would not read back as they are inside a quoted string: quotes and backslashes
# (escapes), `$` (a variable in ssl_certificate, access_log ...), glob characters (`include`) and
# control characters (a newline would also end the comment that names the command).
_NGINX_UNSAFE = re.compile(r"[\"'\\$*?\[\]\x00-\x1f\x7f]")
# What a certificate's DNS name may be in `server_name` (letters, digits, hyphens, dots, a leading wildcard).
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def nginx_path(path: Path, what: str) -> str:
    """``path`` as one double-quoted nginx token, so that a space, `;`, `{` or `#` in a folder name stays part
    of the path instead of ending the directive (or starting a new one); paths nginx cannot take are refused."""
    text = str(path)
    bad = sorted(set(_NGINX_UNSAFE.findall(text)))
    if bad:
        raise CertError(f"{what} {text!r}: nginx cannot be given a path containing {' '.join(repr(c) for c in bad)}; "
                        "use a folder without them")
    return f'"{text}"'


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace every {{name}} of ``template``; an unknown or unfilled placeholder is a bug, not output."""
    names = set(re.findall(r"{{(\w+)}}", template))
    if names != set(values):
        raise CertError(f"template placeholders {sorted(names)} do not match the values {sorted(values)}")
    return re.sub(r"{{(\w+)}}", lambda m: values[m.group(1)], template)


def _certificate_names(certs: Path) -> list[str]:
    """The SANs of ``certs/server.pem``; refuses a folder without the files the proxy needs."""
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (certs / name).is_file():
            raise CertError(f"{certs / name} not found: make the certificates first (genfl-certs tls --out {certs} --san <server address>)")
    cert = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)
    missing = [name for name in LOOPBACK_SANS if name not in names]
    if missing:
        raise CertError(f"{certs / 'server.pem'} is not valid for {', '.join(missing)}, which the proxy and the server's own "
                        f"processes dial: make it again (genfl-certs tls --out {certs} --san <server address> --force)")
    return names


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def render_nginx(certs: Path, out: Path, listen: str = str(PROXY_PORT), superlink_port: int = SUPERLINK_PORT,
                 standalone: Path | None = None, force: bool = False) -> list[Path]:
    """The proxy's nginx site for the certificates in ``certs`` (and, with ``standalone``, a complete
    nginx.conf around it for a private, non-root nginx whose files all live in that folder)."""
    certs, out = certs.resolve(), out.resolve()
    if not 1 <= superlink_port <= 65535:
        raise CertError(f"--superlink-port must be a TCP port (got {superlink_port})")
    listening = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]:|[\w.-]+:)?(\d{1,5})", listen)
    if not listening or not 1 <= int(listening.group(2)) <= 65535:
        raise CertError(f"--listen must be PORT or ADDRESS:PORT (got {listen!r})")
    prefix = standalone.resolve() if standalone is not None else None
    quoted = {"server_pem": nginx_path(certs / "server.pem", "--certs"), "server_key": nginx_path(certs / "server.key", "--certs"),
              "ca_crt": nginx_path(certs / "ca.crt", "--certs"), "site": nginx_path(out, "--out")}
    if prefix is not None:
        quoted |= {name: nginx_path(prefix / name.replace("_", "."), "--standalone")
                   for name in ("nginx_pid", "error_log", "access_log")}
        quoted |= {f"temp_{kind}": nginx_path(prefix / "temp" / kind, "--standalone")
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    names = [name for name in _certificate_names(certs) if name not in LOOPBACK_SANS]
    for name in names:
        if not (_HOST_NAME.fullmatch(name) or _is_ip(name)):
            raise CertError(f"{certs / 'server.pem'} names {name!r}, which is not a host name nginx can serve: make the "
                            f"certificates again with plain --san names (genfl-certs tls --out {certs} --san <server address> --force)")
    command = shlex.join([PROG, "nginx", "--certs", str(certs), "--out", str(out), "--listen", listen,
                          "--superlink-port", str(superlink_port), *(["--standalone", str(prefix)] if prefix else [])])
    files = {out: _fill((NGINX_TEMPLATES / "genfl-fleet.conf.template").read_text(), {
        "command": command, "listen": listen, "superlink_port": str(superlink_port),
        "server_pem": quoted["server_pem"], "server_key": quoted["server_key"], "ca_crt": quoted["ca_crt"],
        "server_names": " ".join(names) or "_", "max_body": PROXY_MAX_BODY,
    })}
    if prefix is not None:
        files[prefix / "nginx.conf"] = _fill((NGINX_TEMPLATES / "standalone.conf.template").read_text(), {
            "command": command, "prefix_sh": shlex.quote(str(prefix)), "conf_sh": shlex.quote(str(prefix / "nginx.conf")),
            "error_log_sh": shlex.quote(str(prefix / "error.log")), "pid_sh": shlex.quote(str(prefix / "nginx.pid")),
            **{key: value for key, value in quoted.items() if key not in ("server_pem", "server_key", "ca_crt")},
        })
    for path, text in files.items():
        if path.exists() and not force:
            raise CertError(f"{path} exists; pass --force to replace it")
    for path, text in files.items():
        _write(path, text.encode(), secret=False, force=True)
    if prefix is not None:
        (prefix / "temp").mkdir(parents=True, exist_ok=True)  # nginx makes its temp folders in it (owned by its workers)
    return list(files)


EXAMPLES = """examples (docs/deploy.md, steps 2-4):
  genfl-certs tls --out certificates --san 192.168.1.10 --san gpu-server.lan
  genfl-certs node-key --out keys --name edge-0
  python genfl_cli/certs.py node-key --out keys --name edge-1   # on an edge box, from its clone
  genfl-certs nginx --certs certificates --listen 9092 --superlink-port 9093
  genfl-certs nginx --certs certificates --listen 192.168.1.10:9092 --out proxy/genfl-fleet.conf --standalone proxy
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Certificates and keys for a secure GenFL deployment (docs/deploy.md).",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tls = commands.add_parser("tls", help="a CA plus the SuperLink's TLS certificate")
    tls.add_argument("--out", type=Path, default=Path("certificates"), help="folder to write into (default: certificates)")
    tls.add_argument("--san", action="append", default=[], help="an IP address or DNS name that nodes dial (repeat for several; 127.0.0.1 and localhost are always added)")
    tls.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    tls.add_argument("--force", action="store_true", help="replace existing files")
    node = commands.add_parser("node-key", help="a SuperNode's authentication key pair")
    node.add_argument("--out", type=Path, default=Path("keys"), help="folder to write into (default: keys)")
    node.add_argument("--name", required=True, help="the node's name, e.g. edge-0: writes NAME.key and NAME.pub")
    node.add_argument("--force", action="store_true", help="replace existing files")
    proxy = commands.add_parser("nginx", help="the nginx site that forwards only the Fleet API to the SuperLink on 127.0.0.1")
    proxy.add_argument("--certs", type=Path, default=Path("certificates"),
                       help="the folder `genfl-certs tls` wrote (default: certificates)")
    proxy.add_argument("--out", type=Path, default=None, help="the site file to write (default: CERTS/genfl-fleet.conf)")
    proxy.add_argument("--listen", default=str(PROXY_PORT),
                       help=f"nginx's `listen`: the port the boxes dial, or ADDRESS:PORT (default: {PROXY_PORT} on every address)")
    proxy.add_argument("--superlink-port", type=int, default=SUPERLINK_PORT,
                       help=f"the port flower-superlink listens on at 127.0.0.1 (default: {SUPERLINK_PORT})")
    proxy.add_argument("--standalone", type=Path, default=None, metavar="DIR",
                       help="also write DIR/nginx.conf: a private nginx (any user) with its pid, logs and temp files in DIR")
    proxy.add_argument("--force", action="store_true", help="replace existing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "tls":
            written = make_tls(args.out, args.san, args.days, args.force)
        elif args.command == "nginx":
            written = render_nginx(args.certs, args.out or args.certs / "genfl-fleet.conf", args.listen, args.superlink_port,
                                   args.standalone, args.force)
        else:
            written = make_node_key(args.out, args.name, args.force)
    except CertError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}{' (secret: keep it on this machine)' if path.suffix == '.key' else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
