"""TF1 ``.meta`` graphs: read a MetaGraphDef without TensorFlow, and recover the network in it.

The data flow: ``reader`` (the MetaGraphDef as typed nodes) -> ``inference`` (the network between the
input and the outputs as TensorFlow runs it at inference) -> ``units`` (TF-Slim layers and graph
units, op by op through the readers of ``ops``) -> ``table`` (the mapping table's graph, kinds and
rows) -> ``recover`` (the table, checked). ``reference`` runs the graph in TensorFlow for ``verify``;
``summary`` describes a graph for ``inspect``.
"""

from converter.metagraph.reader import MetaGraph, Node, read_meta_graph

__all__ = ["MetaGraph", "Node", "read_meta_graph"]
