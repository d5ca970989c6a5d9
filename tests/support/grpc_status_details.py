"""Reading a failed call the way a client does: code, ErrorInfo reason and the other details."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    violations: dict[str, str] = field(default_factory=dict)  # field -> reason
    descriptions: dict[str, str] = field(default_factory=dict)  # field -> description
    quota_subjects: list[str] = field(default_factory=list)
    retry_delay_seconds: float | None = None
    resource: tuple[str, str] | None = None
    detail_types: list[str] = field(default_factory=list)


def failure_of(error: grpc.aio.AioRpcError) -> RpcFailure:
    out = RpcFailure(code=error.code(), message=error.details() or "")
    st = rpc_status.from_call(error)
    if st is None:
        return out
    for detail in st.details:
        out.detail_types.append(detail.type_url.rsplit("/", 1)[-1])
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.domain = info.reason, info.domain
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                out.violations[v.field] = v.reason
                out.descriptions[v.field] = v.description
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            out.quota_subjects = [v.subject for v in quota.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            out.retry_delay_seconds = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            res = error_details_pb2.ResourceInfo()
            detail.Unpack(res)
            out.resource = (res.resource_type, res.resource_name)
    return out


async def rpc_failure(call: Awaitable[Any]) -> RpcFailure:
    """Await a call that must fail and return how it failed."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return failure_of(error)
    raise AssertionError("the call succeeded but was expected to fail")
