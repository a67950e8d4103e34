"""TF1 ``.meta`` graphs: read a MetaGraphDef without TensorFlow, and recover the network in it.

``read_meta_graph`` parses the file (``converter.metagraph.reader``).
"""

from converter.metagraph.reader import MetaGraph, Node, read_meta_graph

__all__ = ["MetaGraph", "Node", "read_meta_graph"]
