"""The sync client over TLS and mutual TLS, with certificates the test generates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import TextInvClient, Unavailable
from proto.textinv.v1 import server_info_pb2, textinv_pb2_grpc


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[Any, Any] | None, ca: bool
) -> Any:
    """A certificate for ``name``, self-signed when ``issuer`` (cert, key) is None."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class InfoOnly(textinv_pb2_grpc.TextInvServicer):
    def GetServerInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return server_info_pb2.GetServerInfoResponse(backend="torch")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test-ca", ca_key, None, ca=True)
    files: dict[str, bytes] = {"ca.pem": _pem(ca)}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{role}.pem"] = _pem(_certificate(role, key, (ca, ca_key), ca=False))
        files[f"{role}.key"] = _pem_key(key)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.fixture(scope="module")
def mtls_target(pki: dict[str, Path]) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    textinv_pb2_grpc.add_TextInvServicer_to_server(InfoOnly(), server)
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.pem"].read_bytes())],
        root_certificates=pki["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"localhost:{port}"
    server.stop(grace=None)


def test_mutual_tls_with_certificate_paths(mtls_target: str, pki: dict[str, Path]) -> None:
    with TextInvClient(
        mtls_target,
        root_certificates=pki["ca.pem"],
        client_certificate=pki["client.pem"],
        client_key=pki["client.key"],
        timeout=10,
    ) as textinv:
        assert textinv.get_server_info().backend == "torch"


def test_missing_client_certificate_is_refused(mtls_target: str, pki: dict[str, Path]) -> None:
    with (
        TextInvClient(mtls_target, root_certificates=pki["ca.pem"], timeout=10) as textinv,
        pytest.raises(Unavailable),
    ):
        textinv.get_server_info()
