"""genfl-certs: a CA-signed SuperLink certificate for the given SANs, SuperNode keys Flower can load, and
the nginx site of the proxy layout (docs/deploy.md) rendered from the same certificates."""

import ipaddress
import re
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key
from cryptography.hazmat.primitives.asymmetric import ec

from genfl_cli import certs
from genfl_cli.certs import main


def test_tls_writes_a_ca_and_a_server_certificate_for_the_given_sans(tmp_path):
    assert main(["tls", "--out", str(tmp_path), "--san", "192.168.1.10", "--san", "gpu.lan", "--days", "30"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # 127.0.0.1 and localhost always: the SuperLink's SuperExec and ServerApp, the admin CLI and the proxy dial them
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.10"), ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["gpu.lan", "localhost"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 29 <= (server.not_valid_after_utc - server.not_valid_before_utc).days <= 31
    key = load_pem_private_key((tmp_path / "server.key").read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    for secret in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600


def test_tls_needs_a_san_and_never_overwrites_silently(tmp_path, capsys):
    assert main(["tls", "--out", str(tmp_path)]) == 2
    assert "--san" in capsys.readouterr().err
    assert main(["tls", "--out", str(tmp_path), "--san", "127.0.0.1"]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    assert main(["tls", "--out", str(tmp_path), "--san", "127.0.0.1"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "ca.key").read_bytes() == before
    assert main(["tls", "--out", str(tmp_path), "--san", "127.0.0.1", "--force"]) == 0
    assert (tmp_path / "ca.key").read_bytes() != before


def test_node_key_is_an_openssh_nist_p384_pair(tmp_path):
    assert main(["node-key", "--out", str(tmp_path), "--name", "edge-0"]) == 0
    private = load_ssh_private_key((tmp_path / "edge-0.key").read_bytes(), None)
    public = load_ssh_public_key((tmp_path / "edge-0.pub").read_bytes())
    assert isinstance(private.curve, ec.SECP384R1)  # Flower's node auth accepts NIST curves only
    assert private.public_key().public_numbers() == public.public_numbers()
    assert (tmp_path / "edge-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE((tmp_path / "edge-0.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["../x", ".hidden", ""])
def test_node_key_name_must_be_a_plain_file_name(tmp_path, name):
    assert main(["node-key", "--out", str(tmp_path), "--name", name]) == 2


def test_nginx_site_forwards_only_the_fleet_api_to_the_superlink_on_loopback(tmp_path):
    assert main(["tls", "--out", str(tmp_path / "certs"), "--san", "192.168.1.10", "--san", "gpu.lan"]) == 0
    site = tmp_path / "genfl-fleet.conf"
    assert main(["nginx", "--certs", str(tmp_path / "certs"), "--out", str(site), "--superlink-port", "9193"]) == 0
    text = site.read_text()
    assert "{{" not in text and "}}" not in text
    assert re.search(r"^\s*listen 9092 ssl;$", text, re.MULTILINE) and "server_name 192.168.1.10 gpu.lan;" in text
    assert "server 127.0.0.1:9193;" in text and "proxy_pass https://genfl_superlink;" in text
    certs_dir = tmp_path / "certs"
    assert f'ssl_certificate     "{certs_dir / "server.pem"}";' in text  # quoted: a space or `;` stays in the path
    assert f'proxy_ssl_trusted_certificate "{certs_dir / "ca.crt"}";' in text
    # one forwarding location, the Fleet API's; everything else is refused
    assert re.findall(r"location (\S+) \{", text) == ["/v1/fleet/", "/"]
    assert re.search(r"location / \{[^}]*return 403", text)
    # never overwritten silently
    assert main(["nginx", "--certs", str(tmp_path / "certs"), "--out", str(site)]) == 2
    assert main(["nginx", "--certs", str(tmp_path / "certs"), "--out", str(site), "--listen", "10.0.0.5:443", "--force"]) == 0
    assert re.search(r"^\s*listen 10.0.0.5:443 ssl;$", site.read_text(), re.MULTILINE)


def test_nginx_needs_the_certificates_with_their_loopback_names(tmp_path, capsys, monkeypatch):
    assert main(["nginx", "--certs", str(tmp_path / "none"), "--out", str(tmp_path / "a.conf")]) == 2
    assert "genfl-certs tls" in capsys.readouterr().err
    with monkeypatch.context() as patch:  # a certificate from before the loopback names were added
        patch.setattr(certs, "LOOPBACK_SANS", ())
        certs.make_tls(tmp_path / "old", ["192.168.1.10"], 30)
    assert main(["nginx", "--certs", str(tmp_path / "old"), "--out", str(tmp_path / "b.conf")]) == 2
    assert "not valid for 127.0.0.1, localhost" in capsys.readouterr().err
    for listen in ("x y", "0", "70000", "host:"):
        assert main(["nginx", "--certs", str(tmp_path / "old"), "--listen", listen, "--out", str(tmp_path / "c.conf")]) == 2


@pytest.mark.skipif(not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")), reason="nginx not installed")
def test_the_rendered_standalone_config_passes_nginx_t(tmp_path):
    assert main(["tls", "--out", str(tmp_path / "certs"), "--san", "127.0.0.2"]) == 0
    prefix = tmp_path / "nginx"
    assert main(["nginx", "--certs", str(tmp_path / "certs"), "--out", str(prefix / "genfl-fleet.conf"),
                 "--listen", "127.0.0.1:19092", "--standalone", str(prefix)]) == 0
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    proc = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f'pid "{prefix}/nginx.pid";' in (prefix / "nginx.conf").read_text()


def test_keys_and_certificates_are_git_ignored():
    import subprocess

    for path in ("certificates/ca.key", "keys/edge-0.key", "some/dir/server.pem", "x.crt"):
        assert subprocess.run(["git", "check-ignore", "-q", path]).returncode == 0, path
