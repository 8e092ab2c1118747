"""Key material for a condex deployment: a private CA, the SuperLink's TLS certificate and SuperNode keys.

Everything is generated locally with the ``cryptography`` library (no openssl binary needed):

* ``ca.key`` / ``ca.crt``            self-signed CA (EC P-384) that the SuperNodes and the ``flwr`` CLI trust;
* ``superlink.key`` / ``superlink.crt``  TLS server certificate signed by the CA, with the SuperLink's
  host names / IP addresses as subjectAltNames (TLS clients check them);
* ``supernode-<name>`` / ``supernode-<name>.pub``  one EC P-384 key pair per data site, in OpenSSH format,
  which is what ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.

Every file is written through a fresh ``O_EXCL | O_NOFOLLOW`` temp file (random name, mode 0600) that is fsynced
and renamed into place; a symlink at a destination is refused. Private keys are 0600 from creation, public
files 0644. Usage::

    python scripts/deploy/pki.py --out keys --san 127.0.0.1 --san localhost --supernodes site-a site-b
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1()  # a NIST curve: `flwr supernode register` refuses others
VALID_DAYS = 365


@dataclass(frozen=True)
class SuperLinkCerts:
    """Paths of the CA certificate and the SuperLink's certificate + key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SuperNodeKeys:
    """Paths of one SuperNode's OpenSSH EC key pair."""

    name: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, private: bool) -> Path:
    """Write ``data`` to ``path`` atomically without following symlinks.

    The bytes go to a fresh temp file with a random name in the same directory, created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (so a private key is never readable by others, not even
    for an instant, and a planted file or symlink at a predictable name is never opened), are fsynced, and the
    temp file is renamed over ``path`` (``os.replace`` replaces the directory entry, it never follows a
    symlink there). A symlink at ``path`` itself is refused. Public files are then made 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise FileExistsError(f"refusing to write {path}: it is a symlink")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of a 64-bit random name
        raise FileExistsError(f"could not create a temp file next to {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if not private:
                os.fchmod(handle.fileno(), 0o644)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)


def make_ca(out: Path, common_name: str = "condex deployment CA"
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed CA and write ``ca.key`` + ``ca.crt`` under ``out``."""
    key = ec.generate_private_key(CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(out / "ca.key", _pem_key(key), private=True)
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
    return key, cert


def make_server_cert(out: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     hosts: Sequence[str], stem: str = "superlink") -> tuple[Path, Path]:
    """Issue a TLS server certificate for ``hosts`` (IPs or DNS names), signed by the CA."""
    if not hosts:
        raise ValueError("the SuperLink certificate needs at least one host name or IP (--san)")
    key = ec.generate_private_key(CURVE)
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key_path = _write(out / f"{stem}.key", _pem_key(key), private=True)
    cert_path = _write(out / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def make_supernode_keys(out: Path, name: str) -> SuperNodeKeys:
    """An EC P-384 key pair in OpenSSH format for one SuperNode (its identity towards the SuperLink)."""
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    priv_path = _write(out / f"supernode-{name}", private, private=True)
    pub_path = _write(out / f"supernode-{name}.pub", public + f" condex-{name}\n".encode(), private=False)
    return SuperNodeKeys(name, priv_path, pub_path)


def generate(out: Path, hosts: Sequence[str], supernodes: Sequence[str]) -> tuple[SuperLinkCerts, list[SuperNodeKeys]]:
    """Create the whole key set under ``out`` and return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(out)
    server_cert, server_key = make_server_cert(out, ca_key, ca_cert, hosts)
    certs = SuperLinkCerts(out / "ca.crt", out / "ca.key", server_cert, server_key)
    return certs, [make_supernode_keys(out, name) for name in supernodes]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the keys and certificates")
    parser.add_argument("--san", action="append", default=[], metavar="HOST",
                        help="SuperLink host name or IP the certificate is valid for (repeatable; default 127.0.0.1, "
                             "localhost)")
    parser.add_argument("--supernodes", nargs="*", default=[], metavar="NAME",
                        help="one key pair per data site name")
    args = parser.parse_args(argv)
    hosts = args.san or ["127.0.0.1", "localhost"]
    certs, nodes = generate(args.out, hosts, args.supernodes)
    print(f"CA certificate:        {certs.ca_cert}")
    print(f"SuperLink certificate: {certs.server_cert} (key {certs.server_key}) for {', '.join(hosts)}")
    for node in nodes:
        print(f"SuperNode {node.name}: private key {node.private_key}, public key {node.public_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
