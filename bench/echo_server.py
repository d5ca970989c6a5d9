"""The baseline: a bare grpc.aio server whose one unary method returns its request.

Same process model as `scheduler-host serve` (one process, the same event loop, grpc.aio) and the
same server options (message size limits, no SO_REUSEPORT), but no interceptors, no database and
no protobuf decoding: the cheapest answer grpc.aio can give. Run as
`python -m bench.echo_server PORT [--reuseport]`; it prints "ready" once it listens. With
`--reuseport` (SO_REUSEPORT, as each worker of `scheduler-host serve --workers N` sets it) several
echo processes share the port, the baseline of a group of workers.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc

from scheduler_host.config import Settings
from scheduler_host.transport import event_loop

SERVICE = "bench.Echo"
METHOD = "Echo"
PATH = f"/{SERVICE}/{METHOD}"


async def _echo(request: bytes, _context: Any) -> bytes:
    return request


def server_options(reuse_port: bool = False) -> list[tuple[str, Any]]:
    """The options `scheduler_host.transport.server.start_server` gives its server."""
    settings = Settings()
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]


async def serve(port: int, reuse_port: bool = False) -> None:
    server = grpc.aio.server(options=server_options(reuse_port))
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server")
    parser.add_argument("port", type=int)
    parser.add_argument(
        "--reuseport",
        action="store_true",
        help="set SO_REUSEPORT, so that several echo processes share the port",
    )
    arguments = parser.parse_args()
    event_loop.run(serve(arguments.port, arguments.reuseport))


if __name__ == "__main__":
    main()
