"""Mapping table schema 2: the compact form of a table, expanded into the form ``mapping`` reads.

A table file (``mappings/README.md``) says once what a machine can derive: ONNX names are the slim
scopes, Keras names follow Keras' creation counter, kinds come from a shared library
(``mappings/kinds.yaml``), a layer's activation sits on its graph node, and ``targets.keras.order``
follows from the graph. ``expand`` turns such a file into the expanded form (every name, kind and
order written out), which is what ``converter.mapping`` validates and what ports record a hash of
(``digest``): two files that mean the same table expand to the same form and hash the same.
"""

import hashlib
import json

DIGEST_SIZE = 16
# the parts of an expanded table that say what it means (its description and file path do not)
MEANING = ("architecture", "scope", "detect", "detect_absent", "outside", "facts", "targets", "graph")


def canonical(table):
    """The meaning of an expanded table (a ``mapping.Table``) as plain data, kinds inlined into their rows.

    Kind names are labels: a row holds its kind's definition, so renaming a kind changes nothing.
    """
    data = {key: getattr(table, key) for key in MEANING}
    data["detect"], data["detect_absent"], data["outside"] = (
        list(data["detect"]), list(data["detect_absent"]), list(data["outside"]))
    data["layers"] = {layer: {**{k: v for k, v in row.items() if k != "kind"}, "kind": table.kinds[row["kind"]]}
                      for layer, row in table.layers.items()}
    return data


def digest(table):
    """blake2b (128-bit, hex) of the table's canonical form as sorted, compact JSON."""
    text = json.dumps(canonical(table), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_SIZE).hexdigest()
