"""genfl-certs: a CA-signed SuperLink certificate for the given SANs and SuperNode keys Flower can load."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key
from cryptography.hazmat.primitives.asymmetric import ec

from cli.certs import main


def test_tls_writes_a_ca_and_a_server_certificate_for_the_given_sans(tmp_path):
    assert main(["tls", "--out", str(tmp_path), "--san", "192.168.1.10", "--san", "gpu.lan", "--days", "30"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.10")]
    assert sans.get_values_for_type(x509.DNSName) == ["gpu.lan"]
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


def test_keys_and_certificates_are_git_ignored():
    import subprocess

    for path in ("certificates/ca.key", "keys/edge-0.key", "some/dir/server.pem", "x.crt"):
        assert subprocess.run(["git", "check-ignore", "-q", path]).returncode == 0, path
