"""TF-Slim networks that the tf-slim pip package does not ship, written with tf_slim layers.

The mapping tables' ``facts.reference`` names them where tf-slim has none (MobileNet V1 and V2 live in
tensorflow/models, ``research/slim/nets/``): same layers, scopes, variable names and defaults as the
published definitions, so they restore the released checkpoints. TensorFlow is imported when a
network is built, not when a module is imported: their width rules are plain Python.
"""
