"""The sync client over TLS and mutual TLS, with certificates the test generates."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.pki import write_test_pki
from textinv_client import TextInvClient, Unavailable
from textinv_client.pb.v1 import server_info_pb2, textinv_pb2_grpc


class InfoOnly(textinv_pb2_grpc.TextInvServicer):
    def GetServerInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return server_info_pb2.GetServerInfoResponse(backend="torch")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_test_pki(tmp_path_factory.mktemp("pki"))


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
