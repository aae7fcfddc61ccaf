"""gRPC API of the VP Lab services.

``vplab.rpc.v1`` holds the stubs generated from ``proto/vplab/v1/*.proto`` (proto package
``vplab.v1``): ``common_pb2`` (Point, Box, RleMask, MaskResult, JobState),
``features_pb2[_grpc]``, ``segmentation_pb2[_grpc]``, ``training_pb2[_grpc]``.
They are committed; regenerate them with ``make proto`` (``python -m vplab.rpc.generate``)
and never edit them by hand. ``tests/test_rpc_codegen.py`` fails when they are stale.
"""
