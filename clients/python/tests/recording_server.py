"""A real grpc.aio server on a loopback port that serves every method of SchedulerHost and
SchedulerAdmin from the generated descriptors, records each call (request and metadata) and
answers what the test scripted: a response message, or a `google.rpc.Status` with details."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, message, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import status_pb2
from grpc_status import rpc_status
from schedulerhost.v1 import scheduler_admin_pb2, scheduler_host_pb2

HOST = "schedulerhost.v1.SchedulerHost"
ADMIN = "schedulerhost.v1.SchedulerAdmin"
# Who the tests' clients say they are.
RUNNER_TOKEN = "runner-token"
ADMIN_TOKEN = "admin-token"
INSTALL_ID = "6f1c1a4e-8b0f-4f55-9d8e-1b2f3c4d5e6f"
SERVICES: tuple[ServiceDescriptor, ...] = (
    scheduler_host_pb2.DESCRIPTOR.services_by_name["SchedulerHost"],
    scheduler_admin_pb2.DESCRIPTOR.services_by_name["SchedulerAdmin"],
)


@dataclass(frozen=True)
class Call:
    """One call as the server received it."""

    method: str  # "/schedulerhost.v1.SchedulerHost/CreateSchedule"
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None  # seconds left of the call's deadline; None without one


def status(code: grpc.StatusCode, text: str, *details: message.Message) -> status_pb2.Status:
    """A google.rpc.Status with `details` packed into Any."""
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return status_pb2.Status(code=code.value[0], message=text, details=packed)


@dataclass
class RecordingServer:
    server: grpc.aio.Server
    port: int
    calls: list[Call] = field(default_factory=list)
    # method path -> answers in order (the last one repeats): a response or a status.
    answers: dict[str, deque[message.Message | status_pb2.Status]] = field(
        default_factory=lambda: defaultdict(deque)
    )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, method: str, *answers: message.Message | status_pb2.Status) -> None:
        """Script the answers of `method` ("SchedulerHost/CreateSchedule" or a full path)."""
        path = method if method.startswith("/") else f"/schedulerhost.v1.{method}"
        self.answers[path].extend(answers)

    def only_call(self) -> Call:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]

    def _next_answer(self, path: str) -> message.Message | status_pb2.Status | None:
        queue = self.answers.get(path)
        if not queue:
            return None
        return queue.popleft() if len(queue) > 1 else queue[0]

    def _handler(self, path: str, response_class: type[message.Message]) -> Any:
        async def behave(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
            self.calls.append(Call(path, request, metadata, context.time_remaining()))
            answer = self._next_answer(path)
            if isinstance(answer, status_pb2.Status):
                await context.abort_with_status(rpc_status.to_status(answer))
            return answer if answer is not None else response_class()

        return behave


async def start_recording_server() -> RecordingServer:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    recorder = RecordingServer(server, port)
    for service in SERVICES:
        handlers = {}
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            path = f"/{service.full_name}/{method.name}"
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                recorder._handler(path, response_class),
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
    await server.start()
    return recorder
