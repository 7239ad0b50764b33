"""Plain values across the sandbox's pipes: ``repr`` out, ``ast.literal_eval`` in, one message per line.

Every container is tagged, so a decoded value is built from literals only: ``("__tuple__", [...])``,
``("__set__", [...])``, ``("__dict__", [[key, value], ...])``, ``("__float__", "nan")`` for the floats ``repr`` cannot
round-trip, ``("__iter__", [...])`` for a returned iterator, and ``("__object__", "ListNode", {...})`` for an object
with attributes (rebuilt as the receiving side's own class of that name, or a namespace). Nothing sent can carry code
or a custom ``__eq__``: the receiver constructs every value itself.
"""

import ast
import math
import os
import sys
import types

LIMIT = 1 << 22  # bytes per message
MAX_ITEMS = 1_000_000


def encode(value):
    kind = type(value)
    if value is None or kind in (bool, int, str, bytes, complex):
        return value
    if kind is float:
        return value if math.isfinite(value) else ("__float__", repr(value))
    if kind is list:
        return [encode(item) for item in value]
    if kind is tuple:
        return ("__tuple__", [encode(item) for item in value])
    if kind in (set, frozenset):
        return ("__set__" if kind is set else "__frozenset__", [encode(item) for item in value])
    if kind is dict:
        return ("__dict__", [[encode(k), encode(v)] for k, v in value.items()])
    if isinstance(value, (bool, int, float, str, bytes)):  # a subclass: sent as its plain value
        for base in (bool, int, float, str, bytes):
            if isinstance(value, base):
                return encode(base(value))
    if hasattr(value, "__next__"):
        items = []
        for item in value:
            items.append(encode(item))
            if len(items) > MAX_ITEMS:
                raise ValueError("an iterator with too many items")
        return ("__iter__", items)
    if hasattr(value, "__dict__") and not callable(value):
        return ("__object__", kind.__name__, {str(k): encode(v) for k, v in vars(value).items()})
    raise TypeError(f"a {kind.__name__} cannot be sent between the candidate and the checker")


def decode(value, classes):
    kind = type(value)
    if kind is list:
        return [decode(item, classes) for item in value]
    if kind is not tuple:
        return value
    tag = value[0] if value else None
    if tag == "__tuple__":
        return tuple(decode(item, classes) for item in value[1])
    if tag == "__set__":
        return {decode(item, classes) for item in value[1]}
    if tag == "__frozenset__":
        return frozenset(decode(item, classes) for item in value[1])
    if tag == "__dict__":
        return {decode(k, classes): decode(v, classes) for k, v in value[1]}
    if tag == "__float__" and value[1] in ("nan", "inf", "-inf"):
        return float(value[1])
    if tag == "__iter__":
        return iter([decode(item, classes) for item in value[1]])
    if tag == "__object__" and isinstance(value[1], str) and type(value[2]) is dict:
        cls = classes.get(value[1])
        if isinstance(cls, type) and cls.__module__ != "builtins":
            obj = cls.__new__(cls)
        else:
            obj = types.SimpleNamespace()
        for key, item in value[2].items():
            setattr(obj, str(key), decode(item, classes))
        return obj
    raise ValueError("a malformed message")


def channel():
    """This side's two pipe ends, as the sandbox hands them over: ``main.py READ_FD WRITE_FD``."""
    sys.setrecursionlimit(20000)  # long linked lists and deep trees are encoded recursively
    return os.fdopen(int(sys.argv[1]), "rb"), os.fdopen(int(sys.argv[2]), "wb")


def dumps(value):
    return (repr(encode(value)) + "\n").encode("utf-8")


def loads(line, classes):
    if not line.endswith(b"\n"):
        raise EOFError("the other side ended, or sent a message over the size limit")
    return decode(ast.literal_eval(line.decode("utf-8")), classes)
