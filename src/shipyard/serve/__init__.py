"""Model server: a TF Serving / Triton style repository served over REST and gRPC.

repository (layout, config, version policy) -> watcher (events + polling) -> manager (loads in
the background, swaps atomically, drains and unloads) -> servable (a Runner behind a dynamic
batcher) -> rest (TF Serving + KServe v2 JSON/binary) and grpc (PredictionService, ModelService,
GRPCInferenceService). Nothing here imports an engine until a model of its format is loaded.
"""
