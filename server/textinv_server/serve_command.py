"""``textinv serve``: flags → ``ServerConfig`` → ``textinv_server.app.serve``."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from textinv.errors import InvalidInputError
from textinv_server.config import BatchingConfig, Limits, ServerConfig, TlsConfig


def add_serve_subcommand(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--model", help="a diffusers model folder or hub id (default: embedded)")
    serve.add_argument("--engines", type=Path, help="the export stage's folder (manifest inside)")
    serve.add_argument("--backend", default="torch", help="torch | onnxruntime | tensorrt")
    serve.add_argument("--device", default="cpu", help="torch backend: cpu or cuda[:N]")
    serve.add_argument("--provider", default="cpu", help="onnxruntime: cpu, cuda or tensorrt")
    serve.add_argument("--weights", choices=["fp32", "fp16", "bf16"], help="torch weights dtype")
    serve.add_argument("--channels-last", action="store_true", help="torch: NHWC UNet")
    serve.add_argument("--cuda-graph", action="store_true", help="torch on CUDA: graph replay")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    serve.add_argument("--data", type=Path, default=Path("textinv-data"), help="state folder")
    serve.add_argument("--max-batch", type=int, default=BatchingConfig.max_batch)
    serve.add_argument("--batch-wait-ms", type=float, default=BatchingConfig.batch_wait_ms)
    serve.add_argument("--max-queue", type=int, default=BatchingConfig.max_queue)
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept this key (repeatable; also $TEXTINV_API_KEYS, comma-separated)",
    )
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates (mTLS)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    serve.add_argument("--grace", type=float, default=10.0, help="shutdown grace in seconds")
    serve.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation")
    limits = serve.add_argument_group("limits (all reported by GetServerInfo)")
    for name, default in vars(Limits()).items():
        limits.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    serve.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInputError("--tls-cert and --tls-key go together; give both or neither")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise InvalidInputError("--tls-client-ca needs --tls-cert and --tls-key")
    if not 0 <= args.port <= 65535:
        raise InvalidInputError(f"--port must be in 0..65535, got {args.port}")
    keys = list(args.api_key) + [
        key for key in os.environ.get("TEXTINV_API_KEYS", "").split(",") if key
    ]
    limits = Limits(**{name: getattr(args, name) for name in vars(Limits())})
    for name, value in vars(limits).items():
        if value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    return ServerConfig(
        model=args.model,
        data_dir=args.data,
        host=args.host,
        port=args.port,
        backend=args.backend,
        engines=args.engines,
        device=args.device,
        provider=args.provider,
        weights=args.weights,
        channels_last=args.channels_last,
        cuda_graph=args.cuda_graph,
        api_keys=tuple(keys),
        tls=TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        metrics_port=args.metrics_port,
        limits=limits,
        batching=BatchingConfig(args.max_batch, args.batch_wait_ms, args.max_queue),
        grace_seconds=args.grace,
        warmup=not args.no_warmup,
    )


def run_serve(args: argparse.Namespace) -> int:
    from textinv_server.app import serve

    config = config_from_args(args)

    def announce(port: int) -> None:
        print(f"textinv serving on {config.host}:{port}", flush=True)

    asyncio.run(serve(config, announce))
    return 0
