"""The collectives around each matmul, chosen by the layout (never by a system name).

``gather_for_up``  makes the residual-side activation ready for an up projection
                   (1D: all-gather the fractured width; 2D: nothing).
``finish_up``      completes an up projection (2D: all-reduce the partials along the
                   hidden axis; 1D: nothing, the output is already column-sharded).
``finish_down``    completes a down projection back into the residual layout
                   (1D: reduce-scatter; 2D: all-reduce along the inner axis).
"""

from __future__ import annotations

from ttdist.model.layout import Layout


def gather_for_up(be, layout: Layout, x):
    if layout.one_d:
        return be.all_gather(x, dim=-1, cluster_axis=layout.hidden_axis)
    return x


def finish_up(be, layout: Layout, y):
    if layout.one_d:
        return y
    return be.all_reduce(y, cluster_axis=layout.hidden_axis)


def finish_down(be, layout: Layout, y):
    if layout.one_d:
        return be.reduce_scatter(y, dim=-1, cluster_axis=layout.inner_axis)
    return be.all_reduce(y, cluster_axis=layout.inner_axis)


def rms_norm(be, layout: Layout, x, weight, eps: float):
    """Plain RMSNorm, or the distributed pre-stats / all-gather / post pair on a fractured width."""
    width = layout.config.hidden_size
    if layout.n_hidden == 1:
        return be.rms_norm(x, weight, eps=eps, width=width)
    stats = be.rms_norm_pre_all_gather(x)
    stats = be.all_gather(stats, dim=-1, cluster_axis=layout.hidden_axis)
    return be.rms_norm_post_all_gather(x, stats, weight, eps=eps, width=width)
