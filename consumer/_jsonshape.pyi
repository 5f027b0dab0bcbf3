# Types of the native module built from consumer/_jsonshape.c (optional; see consumer.events).

def structure(value: bytes, max_depth: int, /) -> int:
    """Keys the JSON text spells (colons outside strings), or -1 if it nests deeper."""

def keys(document: object, /) -> int:
    """Keys kept in the dicts of a parsed document, lists included."""
