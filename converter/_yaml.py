"""Reading the text files a user hands over (mapping tables, batch manifests): bounded and safe.

YAML's anchors and aliases let a few hundred bytes stand for a tree of billions of nodes ("billion
laughs"), or for a node that contains itself; validating such a tree never ends. So, while the file
is still a stream of parser events and before any tree is built, the size and depth of the tree
*as the aliases expand it* are counted and bounded, and an alias inside its own anchor is refused.
So are files larger than any table or manifest needs, text that is not UTF-8, and mapping keys
that are not strings: what is left loads and validates in time and memory bounded by its size.
"""

import yaml

from converter import storage
from converter.errors import ConvertError

# libyaml's safe loader where PyYAML has it (ten times faster than the pure-Python one); both are safe_load
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# a 30,000-layer table is about 5 MB and 400,000 nodes; the built-in ones are 40 KB
MAX_BYTES = 16 << 20
MAX_NODES = 1_000_000
# graphs nest a few levels per block (a node, its branches, their nodes); validators recurse on them
MAX_DEPTH = 64


class _Refused(Exception):
    """A YAML stream that this loader will not build (too large or deep once expanded, or recursive)."""


def read_text(path, what, error=ConvertError):
    """The UTF-8 text of file ``path`` (a ``what``, for messages), at most MAX_BYTES; ``error`` otherwise."""
    try:
        if storage.is_url(path):
            raw = path.read_range(0, MAX_BYTES + 1)
        else:
            with open(path, "rb") as file:
                raw = file.read(MAX_BYTES + 1)
    except OSError as problem:
        raise error(f"{path}: cannot read {what} ({problem.strerror or problem})") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{path}: larger than {MAX_BYTES >> 20} MiB, which no {what} needs; is it the right file?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start}); save {what} as UTF-8") from None


def load(path, what, error=ConvertError):
    """The data of YAML file ``path`` (a ``what``, for messages); ``error`` naming the file for anything refused."""
    text = read_text(path, what, error)
    try:
        _check_events(text)
        data = yaml.load(text, Loader=SAFE_LOADER)
    except _Refused as problem:
        raise error(f"{path}: {problem}") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({str(problem).splitlines()[0]})") from None
    except ValueError as problem:  # a scalar no Python value holds: an integer of 5,000 digits, a lone surrogate
        raise error(f"{path}: not valid YAML ({' '.join(str(problem).split())[:200]})") from None
    problem = _key_problem(data)
    if problem:
        raise error(f"{path}: {problem}")
    return data


def _check_events(text):
    """Refuse a document whose tree, aliases expanded, is too large or deep, or contains itself."""
    anchors = {}  # anchor -> (nodes, depth) of the node it names, once closed
    stack, total = [], 0  # open collections: [anchor, nodes counted before it, depth of its deepest child]
    for event in yaml.parse(text, Loader=SAFE_LOADER):
        where = f"line {event.start_mark.line + 1}"
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, total, 0])
            total += 1
            if len(stack) > MAX_DEPTH:
                raise _Refused(f"{where}: nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, before, deepest = stack.pop()
            if anchor:
                anchors[anchor] = (total - before, deepest + 1)
            if stack:
                stack[-1][2] = max(stack[-1][2], deepest + 1)
            continue
        if isinstance(event, yaml.AliasEvent):
            if any(entry[0] == event.anchor for entry in stack):
                raise _Refused(f"{where}: the alias *{event.anchor} is inside the node it names, which would "
                               f"contain itself")
            nodes, depth = anchors.get(event.anchor, (1, 0))  # an unknown anchor: the loader names it
        elif isinstance(event, yaml.ScalarEvent):
            nodes, depth = 1, 0
            if event.anchor:
                anchors[event.anchor] = (1, 0)
        else:
            continue
        total += nodes
        if total > MAX_NODES:
            raise _Refused(f"{where}: more than {MAX_NODES:,} values once aliases are expanded, more than any "
                           "table or manifest needs")
        if stack:
            stack[-1][2] = max(stack[-1][2], depth)
            if len(stack) + depth > MAX_DEPTH:
                raise _Refused(f"{where}: nested more than {MAX_DEPTH} levels deep once aliases are expanded")


def _key_problem(data):
    """The first mapping key that is not a string, or string that is not UTF-8 (shared nodes seen once per use)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    return f"the key {key!r} is not a string; quote it"
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"the string {ascii(value[:40])} is not valid UTF-8"
    return None
