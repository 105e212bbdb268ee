"""A job's precision on the wire, both ways (issue 15): ``auto`` travels so that clients older
than ``PRECISION_AUTO`` still read the jobs they list."""

from __future__ import annotations

from textinv_client.choices import Precision
from textinv_client.convert import PRECISION_FROM_PB, PRECISION_TO_PB
from textinv_client.convert.wire import enum_from_pb
from textinv_client.pb.v1 import jobs_pb2
from textinv_server.convert import PRECISIONS, precision_to_pb


def test_the_server_sends_auto_as_unspecified_which_means_auto() -> None:
    assert precision_to_pb("auto") == jobs_pb2.PRECISION_UNSPECIFIED
    assert precision_to_pb("bf16") == jobs_pb2.PRECISION_BF16
    assert PRECISIONS[jobs_pb2.PRECISION_UNSPECIFIED] is Precision.AUTO  # and reads it so
    # A client from before PRECISION_AUTO: its table lacks it, and UNSPECIFIED reads as None.
    old_client = {n: p for n, p in PRECISION_FROM_PB.items() if p is not Precision.AUTO}
    assert enum_from_pb(old_client, precision_to_pb("auto"), "precision") is None


def test_a_client_asking_for_auto_sends_precision_auto() -> None:
    # An older server does not know 4 and refuses it, naming the field, rather than run fp32.
    assert PRECISION_TO_PB[Precision.AUTO] == jobs_pb2.PRECISION_AUTO
    assert PRECISION_FROM_PB[jobs_pb2.PRECISION_AUTO] is Precision.AUTO
