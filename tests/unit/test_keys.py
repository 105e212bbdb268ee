"""API keys with tenants and roles: the key file, ``textinv keys``, and the interceptor.

The interceptor is tested in a real ``grpc.aio`` server on a free port, built with the server's
own interceptor list, around a tiny servicer that answers with the principal it runs as.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from textinv.errors import InvalidInputError
from textinv_server.app import _interceptors, check_api_keys
from textinv_server.config import ServerConfig
from textinv_server.interceptors import ApiKeyInterceptor
from textinv_server.keys import (
    MAX_KEY_FILE_BYTES,
    KeyEntry,
    hash_key,
    key_file_text,
    load_key_file,
    plain_key_entries,
)
from textinv_server.keys_command import add_keys_subcommand
from textinv_server.principal import Principal, current_principal, managing_tenant
from textinv_server.serve_command import add_serve_subcommand, config_from_args

ACME_MANAGE, ACME_GENERATE, GLOBEX_MANAGE, PLAIN = "acme-m", "acme-g", "globex-m", "plain-key"
ENTRIES = (
    KeyEntry(hash_key(ACME_MANAGE), "acme", "manage", "ci"),
    KeyEntry(hash_key(ACME_GENERATE), "acme", "generate"),
    KeyEntry(hash_key(GLOBEX_MANAGE), "globex", "manage"),
)
GOOD = {"sha256": "ab" * 32, "tenant": "acme", "role": "manage"}


def write_keys(path: Path, document: Any) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


# --- the key file ---------------------------------------------------------------------------------


def test_hash_key_is_sha256_hex() -> None:
    # FIPS 180-2's test vector for "abc".
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert plain_key_entries(["abc"]) == (KeyEntry(hash_key("abc"), "default", "manage"),)


def test_a_key_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(key_file_text(ENTRIES))
    assert load_key_file(path) == ENTRIES
    upper = {**GOOD, "sha256": "AB" * 32, "name": "x"}
    assert load_key_file(write_keys(path, {"keys": [upper]})) == (
        KeyEntry("ab" * 32, "acme", "manage", "x"),
    )
    assert load_key_file(write_keys(path, {"keys": []})) == ()


SECRET = "s3cr3t-pasted-by-mistake"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ([], 'expected {"keys": \\[...\\]}'),
        ({"keys": [], "extra": 1}, 'expected {"keys"'),
        ({"keys": {}}, '"keys" must be a list'),
        ({"keys": [GOOD, "x"]}, "entry #2: expected an object"),
        ({"keys": [{**GOOD, "tennant": "a"}]}, "entry #1: unknown field 'tennant'"),
        ({"keys": [{"tenant": "a", "role": "manage"}]}, "entry #1: missing field 'sha256'"),
        ({"keys": [{"sha256": "ab" * 32, "role": "manage"}]}, "missing field 'tenant'"),
        ({"keys": [{"sha256": "ab" * 32, "tenant": "a"}]}, "missing field 'role'"),
        ({"keys": [{**GOOD, "sha256": SECRET}]}, "entry #1: field 'sha256' must be 64 hex"),
        ({"keys": [{**GOOD, "sha256": "zz" * 32}]}, "field 'sha256' must be 64 hex"),
        ({"keys": [{**GOOD, "sha256": "ab" * 31}]}, "field 'sha256' must be 64 hex"),
        ({"keys": [{**GOOD, "sha256": 7}]}, "field 'sha256' must be a string"),
        ({"keys": [GOOD, {**GOOD, "tenant": SECRET + "/"}]}, "entry #2: field 'tenant'"),
        ({"keys": [{**GOOD, "tenant": ""}]}, "field 'tenant': a tenant is 1-64"),
        ({"keys": [{**GOOD, "tenant": "a" * 65}]}, "field 'tenant': a tenant is 1-64"),
        ({"keys": [{**GOOD, "role": SECRET}]}, "field 'role' must be one of manage, generate"),
        ({"keys": [{**GOOD, "name": 3}]}, "field 'name' must be printable text"),
        ({"keys": [{**GOOD, "name": "a\nb"}]}, "field 'name' must be printable text"),
        ({"keys": [GOOD, GOOD]}, "entry #2: sha256 repeats entry #1's"),
        ({"keys": [GOOD, {**GOOD, "sha256": "AB" * 32}]}, "entry #2: sha256 repeats"),
    ],
)
def test_a_bad_key_file_is_refused_naming_entry_and_field(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = write_keys(tmp_path / "keys.json", document)
    with pytest.raises(InvalidInputError, match=message) as refusal:
        load_key_file(path)
    assert str(path) in str(refusal.value)
    assert SECRET not in str(refusal.value)


def test_a_key_file_is_bounded_and_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": []}) + " " * MAX_KEY_FILE_BYTES)
    with pytest.raises(InvalidInputError, match="is over 1048576 bytes"):
        load_key_file(path)
    with pytest.raises(InvalidInputError, match="cannot read key file .*missing.json"):
        load_key_file(tmp_path / "missing.json")
    path.write_bytes(b'{"keys": [\xff]}')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_key_file(path)


def test_the_server_refuses_an_empty_key_file_and_a_key_given_twice(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", {"keys": []})
    with pytest.raises(InvalidInputError, match="holds no key"):
        check_api_keys((), path)
    path.write_text(key_file_text(ENTRIES))
    with pytest.raises(InvalidInputError, match="entry #2: sha256 repeats entry #1's"):
        check_api_keys((ACME_MANAGE,), path)
    assert check_api_keys((PLAIN,), path) == (*plain_key_entries([PLAIN]), *ENTRIES)
    assert check_api_keys(()) == ()


# --- the interceptor ------------------------------------------------------------------------------


def test_every_entry_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    interceptor = ApiKeyInterceptor(ENTRIES)
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for key, expected in [
        (ACME_MANAGE, Principal("acme", True)),  # the first entry: no early exit after it
        (GLOBEX_MANAGE, Principal("globex", True)),
        ("wrong", "invalid_key"),
    ]:
        calls.clear()
        assert interceptor.authenticate([("authorization", f"Bearer {key}")]) == expected
        assert calls == [bytes.fromhex(entry.sha256) for entry in ENTRIES]
    assert interceptor.authenticate([]) == "missing_key"
    assert interceptor.authenticate([("authorization", f"Basic {ACME_MANAGE}")]) == "invalid_key"


async def who(request: bytes, context: aio.ServicerContext) -> bytes:
    # The principal is seen in the handler's task, and in a worker thread it starts.
    in_thread = await asyncio.to_thread(current_principal)
    assert in_thread == current_principal()
    return f"{in_thread.tenant} {in_thread.may_manage}".encode()


async def who_stream(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        await asyncio.sleep(0)  # the generator resumes later, and still runs as the caller
        principal = current_principal()
        yield f"{principal.tenant} {principal.may_manage}".encode()


async def manage(request: bytes, context: aio.ServicerContext) -> bytes:
    return managing_tenant("register concepts").encode()


HANDLERS = {
    "Who": grpc.unary_unary_rpc_method_handler(who),
    "WhoStream": grpc.unary_stream_rpc_method_handler(who_stream),
    "Manage": grpc.unary_unary_rpc_method_handler(manage),
}


@asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[aio.Channel]:
    """The server's own interceptors around ``HANDLERS`` and a health service, on a free port."""
    server = aio.server(interceptors=_interceptors(config))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Who", HANDLERS),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def call(channel: aio.Channel, method: str, key: str | None) -> Any:
    """``(code, answers, details)`` of one call; a stream's answers are a list."""
    metadata = None if key is None else bearer(key)
    try:
        if method == "WhoStream":
            stream = channel.unary_stream("/test.Who/WhoStream")(b"", metadata=metadata)
            return grpc.StatusCode.OK, [answer.decode() async for answer in stream], ""
        return (
            grpc.StatusCode.OK,
            (await channel.unary_unary(f"/test.Who/{method}")(b"", metadata=metadata)).decode(),
            "",
        )
    except aio.AioRpcError as error:
        return error.code(), None, error.details()


def keyed_config(tmp_path: Path, **changes: Any) -> ServerConfig:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(key_file_text(ENTRIES))
    return ServerConfig(model=None, data_dir=tmp_path / "data", keys_file=keys_file, **changes)


def test_each_key_runs_its_calls_as_its_tenant_and_role(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(keyed_config(tmp_path, api_keys=(PLAIN,))) as channel:
            ok = grpc.StatusCode.OK
            assert await call(channel, "Who", ACME_MANAGE) == (ok, "acme True", "")
            assert await call(channel, "Who", ACME_GENERATE) == (ok, "acme False", "")
            assert await call(channel, "Who", GLOBEX_MANAGE) == (ok, "globex True", "")
            assert await call(channel, "Who", PLAIN) == (ok, "default True", "")
            stream = await call(channel, "WhoStream", ACME_GENERATE)
            assert stream == (ok, ["acme False", "acme False"], "")
            stream = await call(channel, "WhoStream", GLOBEX_MANAGE)
            assert stream == (ok, ["globex True", "globex True"], "")
            assert await call(channel, "Manage", GLOBEX_MANAGE) == (ok, "globex", "")

    asyncio.run(scenario())


def test_the_status_mapping_sees_the_keyed_handlers_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(keyed_config(tmp_path)) as channel:
            rpc = channel.unary_unary("/test.Who/Manage")(b"", metadata=bearer(ACME_GENERATE))
            with pytest.raises(aio.AioRpcError) as refusal:
                await rpc
            assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may only generate; it may not register concepts" in refusal.value.details()
            # The request id is StatusInterceptor's: it ran inside ApiKeyInterceptor's wrapper.
            assert dict(await rpc.trailing_metadata() or ()).get("x-request-id")

    asyncio.run(scenario())


def test_a_missing_or_wrong_key_is_refused_and_health_stays_open(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(keyed_config(tmp_path)) as channel:
            for method in ("Who", "WhoStream", "Missing"):
                for key in (None, "wrong", "", hash_key(ACME_MANAGE)):
                    code, answer, details = await call(channel, method, key)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (method, key)
                    assert answer is None and "missing or invalid API key" in details
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert (await check).status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_no_keys_warns_and_every_call_is_the_default_tenants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        config = ServerConfig(model=None, data_dir=tmp_path / "data")
        with caplog.at_level(logging.WARNING, logger="textinv_server.app"):
            async with serving(config) as channel:
                assert await call(channel, "Who", None) == (grpc.StatusCode.OK, "default True", "")
        assert any("no API key configured" in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())


# --- textinv keys and textinv serve ---------------------------------------------------------------


def run_command(register: Callable[[argparse._SubParsersAction], None], *argv: str) -> Any:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args if argv[0] == "serve" else args.func(args)


def test_keys_add_prints_a_key_that_only_its_hash_remembers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf" / "keys.json"
    add = ("keys", "add", "--file", str(path))
    assert run_command(add_keys_subcommand, *add, "--tenant", "acme", "--role", "manage") == 0
    first = capsys.readouterr()
    assert "not stored" in first.err
    assert (
        run_command(
            add_keys_subcommand, *add, "--tenant", "b", "--role", "generate", "--name", "ci"
        )
        == 0
    )
    key = capsys.readouterr().out.strip()
    printed = first.out.strip()
    assert len(printed) >= 43 and printed != key
    text = path.read_text()
    assert printed not in text and key not in text and hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [(e.tenant, e.role, e.name) for e in load_key_file(path)] == [
        ("acme", "manage", ""),
        ("b", "generate", "ci"),
    ]
    assert run_command(add_keys_subcommand, "keys", "list", "--file", str(path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TENANT", "ROLE", "NAME", "SHA256"]
    assert lines[2].split() == ["b", "generate", "ci", hash_key(key)[:12]]

    async def scenario() -> None:
        config = ServerConfig(model=None, data_dir=tmp_path / "data", keys_file=path)
        async with serving(config) as channel:
            assert await call(channel, "Who", key) == (grpc.StatusCode.OK, "b False", "")
            assert await call(channel, "Who", printed) == (grpc.StatusCode.OK, "acme True", "")

    asyncio.run(scenario())


def test_keys_add_refuses_a_bad_tenant_or_file(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", "{broken")
    add = ("keys", "add", "--file", str(path), "--role", "manage", "--tenant")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        run_command(add_keys_subcommand, *add, "acme")
    with pytest.raises(InvalidInputError, match="a tenant is 1-64"):
        run_command(add_keys_subcommand, *add, "a/b")
    assert path.read_text() == "{broken"


def test_serve_takes_keys_file_and_store_from_flags_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def config(*argv: str) -> ServerConfig:
        return config_from_args(run_command(add_serve_subcommand, "serve", *argv))

    monkeypatch.delenv("TEXTINV_KEYS_FILE", raising=False)
    monkeypatch.delenv("TEXTINV_STORE", raising=False)
    assert (config().keys_file, config().store) == (None, "sqlite")
    monkeypatch.setenv("TEXTINV_KEYS_FILE", "env.json")
    monkeypatch.setenv("TEXTINV_STORE", "postgresql:///env")
    assert (config().keys_file, config().store) == (Path("env.json"), "postgresql:///env")
    flagged = config("--keys", "flag.json", "--store", "postgresql:///flag")
    assert (flagged.keys_file, flagged.store) == (Path("flag.json"), "postgresql:///flag")
    monkeypatch.setenv("TEXTINV_STORE", "")
    with pytest.raises(InvalidInputError, match=r"\$TEXTINV_STORE is set but empty"):
        config()
