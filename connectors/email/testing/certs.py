"""One test certificate authority per process, and a server certificate for ``127.0.0.1`` and ``localhost``.

Dovecot reads the certificate and key from files and aiosmtpd takes an ``ssl.SSLContext``; a client trusts
``ca_file()`` (``ssl.create_default_context(cafile=...)``) or takes ``client_context()``. The files live in a
temporary directory removed when the process exits.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAMES = ("127.0.0.1", "localhost")
"""The names the server certificate is valid for: a client may check either."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Certs:
    """The PEM files of the test CA and of the server certificate it issued.

    Attributes:
        ca_file: the CA certificate a client trusts.
        cert_file: the server certificate followed by its chain.
        key_file: the server certificate's private key (unencrypted).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


@functools.cache
def server_certs() -> Certs:
    """The process's test CA and server certificate, made on first use."""
    ca = trustme.CA(organization_name="supportbot tests")
    server = ca.issue_cert(*SERVER_NAMES)
    directory = Path(tempfile.mkdtemp(prefix="supportbot-test-certs-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    made = Certs(ca_file=directory / "ca.pem", cert_file=directory / "server.pem", key_file=directory / "server.key")
    ca.cert_pem.write_to_path(str(made.ca_file))
    made.cert_file.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(made.key_file))
    # Dovecot's config process reads these as root (or as this user); nothing else needs them.
    made.key_file.chmod(0o600)
    return made


def ca_file() -> Path:
    """The PEM file of the CA that issued the test servers' certificate."""
    return server_certs().ca_file


def server_context() -> ssl.SSLContext:
    """A server-side TLS context presenting the test certificate (for aiosmtpd and other fakes)."""
    made = server_certs()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(made.cert_file, made.key_file)
    return context


def client_context() -> ssl.SSLContext:
    """A client-side TLS context that trusts the test CA (and nothing else), checking host names."""
    return ssl.create_default_context(cafile=str(server_certs().ca_file))
