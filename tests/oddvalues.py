"""What the C stages' odd-value sweeps share: subclasses of the plain types
(a C fast path must check exact types, and decline these to Python), every
path into a nested value, and a copy with one path changed or removed."""

from __future__ import annotations

ABSENT = object()  # with_path's value for "remove the key / the item"


class StrSub(str):
    pass


class IntSub(int):
    pass


class DictSub(dict):
    pass


class BytesSub(bytes):
    pass


def paths(x, prefix=()):
    """() first, then the path (keys and indexes) of every value inside x."""
    yield prefix
    if type(x) is dict:
        for k in x:
            yield from paths(x[k], prefix + (k,))
    elif type(x) is list:
        for i, v in enumerate(x):
            yield from paths(v, prefix + (i,))


def with_path(x, path, value):
    """x with the value at path replaced (ABSENT: removed), key order kept;
    x itself untouched."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    y = dict(x) if type(x) is dict else list(x)
    if rest:
        y[head] = with_path(x[head], rest, value)
    elif value is ABSENT:
        del y[head]
    else:
        y[head] = value
    return y
