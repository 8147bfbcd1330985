"""How many more users' KV a replica's host-memory tier holds (``ttdist.engine.kv_tiers``).

The host tier keeps a page as the model runner reads it off the chips: every layer's K and V of
every KV head the cache stores (``Layout.n_kv_local`` heads on each of the ``n_inner`` chips that
split them), in float32 for a float32 cache and as bfloat16 bits for a bfloat16 or bfloat8_b one
(a bfloat8_b value is exact in bfloat16; block exponents are not kept). A user's KV at the plan's
context is whole pages of that; the tier holds ``host_bytes`` of them. These users are not decoded
from host memory: their pages come back onto the chips (instead of being prefilled again) when
their next turn arrives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ttdist.mesh.precision import DType
from ttdist.model.layout import Layout

DEFAULT_HOST_BYTES = 64 * 2**30   # ``ttdist plan --kv-host-bytes``: a tenth of a 640 GB host


@dataclass(frozen=True)
class HostTierPlan:
    host_bytes: int
    page_bytes: int           # one page (every layer's K and V) as the host tier holds it
    user_bytes: int           # one user's KV at the plan's context, whole pages
    users: int                # users whose whole KV the tier holds

    def to_json(self) -> dict:
        return asdict(self)


def host_tier(layout: Layout, kv_dtype: DType, *, context: int, page_size: int, host_bytes: int) -> HostTierPlan:
    c = layout.config
    element = 4 if kv_dtype is DType.float32 else 2
    page = 2 * c.num_hidden_layers * layout.n_kv_local * layout.n_inner * page_size * c.head_dim * element
    user = page * -(-context // page_size)
    return HostTierPlan(host_bytes, page, user, host_bytes // user)
