"""Elementwise, reduction, typecast and top-k ops (``ttnn/operations/binary.py``, ``unary.py``,
``reduction.py``, ``core.py``: their golden functions are torch's ``add``/``mul``/``lt``/...,
``exp``, ``log``, ``reciprocal``, ``sum`` and ``topk``, whose ``indices_tensor`` labels are gathered at the
selected positions; ``bitwise_and`` / ``bitwise_right_shift`` of an INT32 tensor and an int are torch's
``bitwise_and`` / ``bitwise_right_shift``).

Binary ops broadcast their operands' logical shapes (dims of one expand), take a number for
either operand, and compute in float32 then round to the output dtype (``dtype=`` for the
comparisons, else the tensor operand's). Comparisons give 1.0 / 0.0. The output keeps the
first tensor operand's layout and, without ``memory_config``, its memory config.
``input_tensor_a_activations=[UnaryOpType.SILU]`` (a fused SiLU on A) is the one activation
modeled. ``output_tensor=`` writes the result into a given tensor of the result's shape and
dtype (an operand too: the in-place form). ``topk`` returns values in the input's dtype and UINT16 indices (UINT32 for a
float32 input or a reduced dim over 65536, as ttnn's doc says), TILE layout; padding never
wins (ttnn fills it with -inf).
"""

from __future__ import annotations

import numbers

import numpy as np

from ttdist.mesh.ttnn_emu import kernel as kn
from ttdist.mesh.ttnn_emu.tensor import Tensor
from ttdist.mesh.ttnn_emu.types import DataType, Layout, UnaryOpType

_SILU = UnaryOpType.SILU
_BINARY_TYPES = frozenset({DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.BFLOAT4_B, DataType.FLOAT32, DataType.INT32,
                           DataType.UINT32, DataType.UINT16})


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _operand(op: str, x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Number):
        return float(x)
    raise TypeError(f"{op}: operands are ttnn.Tensor or numbers, got {type(x).__name__}")


def _broadcast(op: str, a_shape, b_shape) -> tuple:
    try:
        return tuple(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))
    except ValueError:
        raise kn.fatal(op, f"shapes {list(a_shape)} and {list(b_shape)} do not broadcast") from None


def _activate(op: str, acts, x: np.ndarray) -> np.ndarray:
    for act in acts or ():
        if act is not _SILU:
            raise NotImplementedError(f"ttnn emulator: {op} activation {act} is not modeled (only UnaryOpType.SILU)")
        x = _silu(x)
    return x


def _binary(op: str, fn, a, b, *, memory_config=None, dtype=None, output_tensor=None, activations=None,
            input_tensor_a_activations=None, input_tensor_b_activations=None, fast_and_approximate_mode=None,
            comparison: bool = False, **extra):
    kn.no_extra(op, dict(extra, activations=activations))
    a, b = _operand(op, a), _operand(op, b)
    tensors = [t for t in (a, b) if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError(f"{op}: at least one operand must be a tensor")
    device = kn.device_of(op, *tensors)
    first = tensors[0]
    for t in tensors:
        kn.require_dtype(op, t, _BINARY_TYPES)
    if len(tensors) == 2 and not (a.dtype.is_float and b.dtype.is_float) and a.dtype is not b.dtype:
        raise kn.fatal(op, f"operand dtypes {a.dtype.name} and {b.dtype.name} must match unless both are floats")
    shape = _broadcast(op, a.shape, b.shape) if len(tensors) == 2 else tuple(first.shape)
    out_dtype = dtype or first.dtype
    if output_tensor is None:
        out = kn.output(device, shape, out_dtype, first.layout, memory_config or first.memory_config())
    else:
        out = _given_output(op, device, output_tensor, shape, out_dtype)
    a_acts, b_acts = input_tensor_a_activations, input_tensor_b_activations

    def run():
        va = _activate(op, a_acts, kn.read(a).astype(np.float32, copy=False)) if isinstance(a, Tensor) else a
        vb = _activate(op, b_acts, kn.read(b).astype(np.float32, copy=False)) if isinstance(b, Tensor) else b
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            va, vb = _align(va, len(a.shape), vb, len(b.shape))
        result = fn(va, vb)
        kn.write(out, result.astype(np.float32) if comparison else result)

    device.launch(op, tensors, [out], run, (str(a_acts), str(b_acts), out_dtype, None if isinstance(a, Tensor) else a,
                                           None if isinstance(b, Tensor) else b))
    return out


def _given_output(op: str, device, out, shape, dtype: DataType) -> Tensor:
    """``output_tensor=``: the result is written into this existing tensor (it may be an operand:
    ttnn's in-place form), which must have the result's shape and dtype."""
    if kn.device_of(op, out) is not device:
        raise kn.fatal(op, "output_tensor must be on the operands' device")
    if tuple(out.shape) != tuple(shape) or out.dtype is not dtype:
        raise kn.fatal(op, f"output_tensor is {list(out.shape)} {out.dtype.name}; the result is {list(shape)} {dtype.name}")
    return out


def _align(va: np.ndarray, ra: int, vb: np.ndarray, rb: int):
    """Left-pad the lower-rank operand's logical dims (after the two mesh dims) so numpy broadcasts like ttnn."""
    if ra < rb:
        va = va.reshape(va.shape[:2] + (1,) * (rb - ra) + va.shape[2:])
    elif rb < ra:
        vb = vb.reshape(vb.shape[:2] + (1,) * (ra - rb) + vb.shape[2:])
    return va, vb


def add(a, b, **kw):
    return _binary("add", np.add, a, b, **kw)


def subtract(a, b, **kw):
    return _binary("subtract", np.subtract, a, b, **kw)


def multiply(a, b, **kw):
    return _binary("multiply", np.multiply, a, b, **kw)


def mul(a, b, **kw):
    return _binary("mul", np.multiply, a, b, **kw)


def lt(a, b, **kw):
    return _binary("lt", np.less, a, b, comparison=True, **kw)


def gt(a, b, **kw):
    return _binary("gt", np.greater, a, b, comparison=True, **kw)


def ge(a, b, **kw):
    return _binary("ge", np.greater_equal, a, b, comparison=True, **kw)


def le(a, b, **kw):
    return _binary("le", np.less_equal, a, b, comparison=True, **kw)


def eq(a, b, **kw):
    return _binary("eq", np.equal, a, b, comparison=True, **kw)


def ne(a, b, **kw):
    return _binary("ne", np.not_equal, a, b, comparison=True, **kw)


def _unary(op: str, fn, x, allowed, *, memory_config=None, output_tensor=None, fast_and_approximate_mode=None,
           sub_core_grids=None, **extra):
    kn.no_extra(op, dict(extra, output_tensor=output_tensor, sub_core_grids=sub_core_grids))
    device = kn.device_of(op, x)
    kn.require_dtype(op, x, allowed)
    out = kn.output(device, x.shape, x.dtype, x.layout, memory_config or x.memory_config())

    def run():
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            kn.write(out, fn(kn.read(x).astype(np.float32, copy=False)))

    device.launch(op, [x], [out], run)
    return out


def _bitwise(op: str, fn, x, value, *, memory_config=None, output_tensor=None, sub_core_grids=None, **extra):
    """An integer op of a tensor and a Python int (ttnn's unary ``bitwise_*``; golden: torch's ``bitwise_*``
    on int32, an arithmetic right shift)."""
    kn.no_extra(op, dict(extra, output_tensor=output_tensor, sub_core_grids=sub_core_grids))
    device = kn.device_of(op, x)
    kn.require_dtype(op, x, {DataType.INT32})
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{op}: the second operand is an int, got {type(value).__name__}")
    out = kn.output(device, x.shape, x.dtype, x.layout, memory_config or x.memory_config())

    def run():
        kn.write(out, fn(kn.read(x).astype(np.int32, copy=False), np.int32(value)))

    device.launch(op, [x], [out], run, (int(value),))
    return out


def bitwise_and(x, value, **kw):
    return _bitwise("bitwise_and", np.bitwise_and, x, value, **kw)


def bitwise_right_shift(x, value, **kw):
    if not 0 <= int(value) < 32:
        raise kn.fatal("bitwise_right_shift", f"shift amount {value} must lie in [0, 32)")
    return _bitwise("bitwise_right_shift", np.right_shift, x, value, **kw)


def exp(x, **kw):
    return _unary("exp", np.exp, x, {DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32}, **kw)


def log(x, **kw):
    return _unary("log", np.log, x, {DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32}, **kw)


def reciprocal(x, **kw):
    return _unary("reciprocal", np.reciprocal, x, {DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32}, **kw)


def neg(x, **kw):
    return _unary("neg", np.negative, x, kn.FLOAT_TYPES, **kw)


def silu(x, **kw):
    return _unary("silu", _silu, x, {DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.FLOAT32}, **kw)


def sum(x, dim=None, keepdim: bool = False, *, memory_config=None, compute_kernel_config=None, scalar=None, **extra):  # noqa: A001
    """ttnn.sum over one dim (the golden: torch.sum); TILE output in the input's dtype."""
    kn.no_extra("sum", extra)
    device = kn.device_of("sum", x)
    kn.require_dtype("sum", x, {DataType.FLOAT32, DataType.BFLOAT16, DataType.BFLOAT8_B, DataType.INT32})
    if dim is None or isinstance(dim, (tuple, list)):
        raise NotImplementedError("ttnn emulator: sum over all dims or several dims is not modeled; pass one dim")
    d = kn.normalize_dim("sum", dim, len(x.shape))
    shape = list(x.shape)
    shape[d] = 1
    if not keepdim:
        del shape[d]
    out = kn.output(device, shape, x.dtype, Layout.TILE, memory_config or x.memory_config())
    factor = 1.0 if scalar is None else float(scalar)

    def run():
        kn.write(out, np.sum(kn.read(x).astype(np.float32, copy=False) * factor, axis=2 + d, keepdims=keepdim))

    device.launch("sum", [x], [out], run, (d, keepdim, factor))
    return out


def typecast(x, dtype: DataType, *, memory_config=None, output_tensor=None, sub_core_grids=None, **extra):
    kn.no_extra("typecast", dict(extra, output_tensor=output_tensor, sub_core_grids=sub_core_grids))
    device = kn.device_of("typecast", x)
    if dtype.is_block_float and x.layout is not Layout.TILE:
        raise kn.fatal("typecast", f"{dtype.name} needs TILE layout")
    out = kn.output(device, x.shape, dtype, x.layout, memory_config or x.memory_config())

    def run():
        kn.write(out, kn.read(x))

    device.launch("typecast", [x], [out], run, (dtype,))
    return out


def topk(x, k: int, dim: int = -1, largest: bool = True, sorted: bool = True, *, memory_config=None,  # noqa: A002
         output_tensor=None, sub_core_grids=None, indices_tensor=None, stable=None, **extra):
    op = "topk"
    kn.no_extra(op, dict(extra, output_tensor=output_tensor, sub_core_grids=sub_core_grids))
    device = kn.device_of(op, x)
    kn.require_dtype(op, x, {DataType.BFLOAT8_B, DataType.BFLOAT16, DataType.FLOAT32})
    kn.require_layout(op, x, Layout.TILE)
    if memory_config is not None and memory_config.is_sharded():
        raise kn.fatal(op, "sharded output memory configs are not supported")
    d = kn.normalize_dim(op, dim, len(x.shape))
    if not 1 <= k <= x.shape[d]:
        raise kn.fatal(op, f"k={k} must lie in [1, {x.shape[d]}]")
    shape = list(x.shape)
    shape[d] = k
    wide = x.dtype is DataType.FLOAT32 or x.padded_shape[d] > 65536
    if indices_tensor is not None:
        wide = _check_labels(op, x, indices_tensor, wide, stable)
    mem = memory_config or x.memory_config()
    values = kn.output(device, shape, x.dtype, Layout.TILE, mem)
    index = kn.output(device, shape, DataType.UINT32 if wide else DataType.UINT16, Layout.TILE, mem)

    def run():
        v = np.moveaxis(kn.read(x).astype(np.float32, copy=False), 2 + d, -1)
        keys = -v if largest else v
        if k < keys.shape[-1]:  # the k best in any order, then ordered (ties by index, as a stable sort would)
            best = np.sort(np.argpartition(keys, k - 1, axis=-1)[..., :k], axis=-1)
            order = np.take_along_axis(best, np.argsort(np.take_along_axis(keys, best, -1), axis=-1, kind="stable"), -1)
        else:
            order = np.argsort(keys, axis=-1, kind="stable")
        kn.write(values, np.moveaxis(np.take_along_axis(v, order, axis=-1), -1, 2 + d))
        if indices_tensor is not None:  # the caller's label at each selected position (the golden's torch.gather)
            order = np.take_along_axis(np.moveaxis(kn.read(indices_tensor), 2 + d, -1), order, axis=-1)
        kn.write(index, np.moveaxis(order, -1, 2 + d))

    inputs = [x] if indices_tensor is None else [x, indices_tensor]
    device.launch(op, inputs, [values, index], run, (k, d, largest, sorted, indices_tensor is not None))
    return values, index


def _check_labels(op: str, x, labels, wide: bool, stable) -> bool:
    """ttnn's rules for ``indices_tensor``: x's logical shape, TILE, UINT16/UINT32/INT32, not with
    ``stable``; a UINT16 label tensor where 32-bit indices are needed is refused, 32-bit labels widen
    the output indices. Whether the output indices are 32-bit."""
    kn.device_of(op, x, labels)
    if tuple(labels.shape) != tuple(x.shape):
        raise kn.fatal(op, f"indices_tensor has shape {list(labels.shape)}, the input {list(x.shape)}")
    kn.require_layout(op, labels, Layout.TILE)
    kn.require_dtype(op, labels, {DataType.UINT16, DataType.UINT32, DataType.INT32})
    if stable:
        raise kn.fatal(op, "indices_tensor cannot be combined with stable=True")
    if labels.dtype is DataType.UINT16 and wide:
        raise kn.fatal(op, "a UINT16 indices_tensor where 32-bit indices are needed (float32 input or a dim over 65536)")
    return wide or labels.dtype is not DataType.UINT16
