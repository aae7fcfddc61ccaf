"""Inference engines behind the features and segmentation services.

Plain Python classes over the object store: the Serve deployments in ``services/`` only
translate gRPC to calls on these (and tests use them without Ray).
"""
