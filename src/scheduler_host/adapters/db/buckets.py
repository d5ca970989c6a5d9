"""The distribution column of the tenant tables: `bucket`, computed from the tenant id.

Every row of a tenant table carries its tenant's bucket, every key and index starts with it, and
every statement names it with an equality, so that a sharded PostgreSQL (Citus, distributed by
`bucket`) routes each statement to one shard and keeps a tenant's rows together. The function
and BUCKETS are part of the stored data: they never change once rows exist (a test pins them).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

# 256 buckets: room for 256 shards (8 per worker on 32 workers), while a burst of schedules
# spread over many tenants still makes per-bucket batches of useful size.
BUCKETS = 256


@lru_cache(maxsize=65_536)
def bucket_of(tenant_id: str) -> int:
    """The bucket of a tenant: the first 8 bytes of SHA-256 of its id (UTF-8), mod BUCKETS."""
    return int.from_bytes(hashlib.sha256(tenant_id.encode()).digest()[:8], "big") % BUCKETS
