"""gRPC: TF Serving's PredictionService + ModelService and KServe v2's GRPCInferenceService.

Services are registered by their public names with generic handlers over shipyard's own
generated messages (see protos/*.proto for why), so stock clients (tensorflow-serving-api's
stubs, tritonclient.grpc) talk to it unchanged. Handlers run on the server's thread pool and
wait on the batcher's futures, so the engine's threads do the work.
"""
from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
import numpy as np
from google.protobuf import json_format

from shipyard.errors import InputError
from shipyard.serve import codec, inference, protocol, tfs_examples
from shipyard.serve.errors import status_of
from shipyard.serve.protos import kserve_pb2 as kpb
from shipyard.serve.protos import tfserving_pb2 as tpb

log = logging.getLogger("shipyard.serve")
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


class _Undecodable:
    """What the deserializer hands over for bytes that are not the expected message.

    grpcio (1.x, grpc/_server.py) answers INTERNAL "Exception deserializing request!" both when
    a request_deserializer raises and when it returns None, before any handler runs; nothing
    in its API maps a parse failure to another code. So the deserializer never fails: it
    returns this marker, and the handler turns it into INVALID_ARGUMENT.
    """

    __slots__ = ("error", "message")

    def __init__(self, message: str, error: str):
        self.message = message
        self.error = error


def _lenient(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or whatever the protobuf backend raises
            return _Undecodable(message_class.DESCRIPTOR.full_name, str(exc) or exc.__class__.__name__)
    return parse


class GrpcAPI(protocol.Frontend):
    """The auth rule is REST's: health (ServerLive, ServerReady) is open, every other method
    needs the token."""

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, service: str, model_of, fn, public: bool = False):
        def handler(request, context):
            start = time.perf_counter()
            model = ""
            try:
                undecodable = isinstance(request, _Undecodable)
                if not undecodable:
                    model = model_of(request)
                if not public:
                    self._check_auth(context)
                if undecodable:
                    raise InputError(f"cannot decode the request as {request.message} ({request.error})")
                reply = fn(request)
                code = "OK"
                return reply
            except Exception as exc:
                http, code = status_of(exc)
                if http == 500:
                    log.exception("internal error in %s", service)
                message = getattr(exc, "message", None) or f"internal error: {exc.__class__.__name__}"
                context.abort(getattr(grpc.StatusCode, code), message)
            finally:
                self.metrics.observe_request(self.metric_model(model), "grpc", code, time.perf_counter() - start)
        return handler

    def _check_auth(self, context) -> None:
        if self.auth_token is not None:
            self.check_bearer(dict(context.invocation_metadata()).get("authorization", ""))

    def handlers(self) -> list:
        def unary(fn, req, resp, model_of=lambda r: "", public=False):
            return grpc.unary_unary_rpc_method_handler(self._call(fn.__name__, model_of, fn, public),
                                                       request_deserializer=_lenient(req),
                                                       response_serializer=resp.SerializeToString)
        spec_name = lambda r: r.model_spec.name
        return [
            grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
                "Predict": unary(self.predict, tpb.PredictRequest, tpb.PredictResponse, spec_name),
                "GetModelMetadata": unary(self.get_model_metadata, tpb.GetModelMetadataRequest,
                                          tpb.GetModelMetadataResponse, spec_name),
                "Classify": unary(self.classify, tpb.ClassificationRequest, tpb.ClassificationResponse, spec_name),
                "Regress": unary(self.regress, tpb.RegressionRequest, tpb.RegressionResponse, spec_name),
                "MultiInference": unary(self.multi_inference, tpb.MultiInferenceRequest, tpb.MultiInferenceResponse,
                                        lambda r: r.tasks[0].model_spec.name if r.tasks else ""),
            }),
            grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
                "GetModelStatus": unary(self.get_model_status, tpb.GetModelStatusRequest,
                                        tpb.GetModelStatusResponse, spec_name),
            }),
            grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
                "ServerLive": unary(lambda r: kpb.ServerLiveResponse(live=True), kpb.ServerLiveRequest,
                                    kpb.ServerLiveResponse, public=True),
                "ServerReady": unary(lambda r: kpb.ServerReadyResponse(ready=self.manager.ready()),
                                     kpb.ServerReadyRequest, kpb.ServerReadyResponse, public=True),
                "ModelReady": unary(self.model_ready, kpb.ModelReadyRequest, kpb.ModelReadyResponse, lambda r: r.name),
                "ServerMetadata": unary(lambda r: kpb.ServerMetadataResponse(
                    name=protocol.SERVER_NAME, version=protocol.SERVER_VERSION, extensions=protocol.EXTENSIONS),
                    kpb.ServerMetadataRequest, kpb.ServerMetadataResponse),
                "ModelMetadata": unary(self.model_metadata, kpb.ModelMetadataRequest, kpb.ModelMetadataResponse,
                                       lambda r: r.name),
                "ModelInfer": unary(self.model_infer, kpb.ModelInferRequest, kpb.ModelInferResponse,
                                    lambda r: r.model_name),
                "ModelConfig": unary(lambda r: json_format.ParseDict(
                    {"config": protocol.model_config(self.manager, r.name, protocol.parse_version(r.version))},
                    kpb.ModelConfigResponse()), kpb.ModelConfigRequest, kpb.ModelConfigResponse, lambda r: r.name),
                "ModelStatistics": unary(lambda r: json_format.ParseDict(
                    protocol.model_stats(self.manager, r.name, protocol.parse_version(r.version)),
                    kpb.ModelStatisticsResponse()), kpb.ModelStatisticsRequest, kpb.ModelStatisticsResponse,
                    lambda r: r.name),
                "RepositoryIndex": unary(lambda r: json_format.ParseDict(
                    {"models": protocol.repository_index(self.manager, r.ready)}, kpb.RepositoryIndexResponse()),
                    kpb.RepositoryIndexRequest, kpb.RepositoryIndexResponse),
            }),
        ]

    # -- TF Serving ---------------------------------------------------------------------------

    def _spec(self, spec) -> tuple[int | None, str | None]:
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return spec.version.value, None
        if choice == "version_label":
            return None, spec.version_label
        return None, None

    def predict(self, request):
        version, label = self._spec(request.model_spec)
        if request.model_spec.signature_name not in ("", "serving_default"):
            raise InputError(f"unknown signature '{request.model_spec.signature_name}'",
                             hint="shipyard serves one signature: serving_default")
        limits = self.limits(self.manager.resolve(request.model_spec.name, version, label))
        feeds = {k: codec.from_tensor_proto(v, f"input '{k}'", limits, k) for k, v in request.inputs.items()}
        servable, future = self.manager.submit(request.model_spec.name, feeds, version, label)
        outputs = protocol.filter_outputs(future.result(), list(request.output_filter) or None)
        reply = tpb.PredictResponse()
        reply.model_spec.name = request.model_spec.name
        reply.model_spec.version.value = servable.version
        reply.model_spec.signature_name = "serving_default"
        for name, arr in outputs.items():
            codec.to_tensor_proto(np.asarray(arr), reply.outputs[name])
        return reply

    def _examples(self, spec, method: str, examples: list[bytes], context: bytes | None):
        """Run serialized Examples through the served signature for Classify/Regress."""
        version, label = self._spec(spec)
        signature = tfs_examples.signature_name(spec.signature_name)
        servable = self.manager.resolve(spec.name, version, label)
        feeds = tfs_examples.prepare(servable.signature_of(signature), method, examples, context)
        outputs = servable.submit_to(signature, feeds).result()
        return servable, signature, tfs_examples.answer(method, outputs, len(examples))

    @staticmethod
    def _input(message) -> tuple[list[bytes], bytes | None]:
        kind = message.WhichOneof("kind")
        if kind == "example_list":
            return list(message.example_list.examples), None
        if kind == "example_list_with_context":
            return list(message.example_list_with_context.examples), message.example_list_with_context.context
        raise InputError("Input is empty.")

    @staticmethod
    def _fill(result, method: str, answer) -> None:
        if method == tfs_examples.REGRESS:
            for value in answer:
                result.regressions.add(value=value)
            return
        for row in answer:
            target = result.classifications.add()
            for label, score in row:
                cls = target.classes.add()
                if label is not None:
                    cls.label = label.decode("utf-8", "replace")
                if score is not None:
                    cls.score = score

    @staticmethod
    def _reply_spec(target, spec, servable, signature: str) -> None:
        target.name = spec.name
        target.version.value = servable.version
        target.signature_name = signature

    def classify(self, request):
        return self._one_method(request, tfs_examples.CLASSIFY, tpb.ClassificationResponse())

    def regress(self, request):
        return self._one_method(request, tfs_examples.REGRESS, tpb.RegressionResponse())

    def _one_method(self, request, method: str, reply):
        servable, signature, answer = self._examples(request.model_spec, method, *self._input(request.input))
        self._reply_spec(reply.model_spec, request.model_spec, servable, signature)
        self._fill(reply.result, method, answer)
        return reply

    def multi_inference(self, request):
        tasks = list(request.tasks)
        tfs_examples.multi_inference([t.model_spec.name for t in tasks],
                                     [tfs_examples.signature_name(t.model_spec.signature_name) for t in tasks],
                                     [t.method_name for t in tasks])
        examples, context = self._input(request.input)
        reply = tpb.MultiInferenceResponse()
        for task in tasks:
            servable, signature, answer = self._examples(task.model_spec, task.method_name, examples, context)
            result = reply.results.add()
            self._reply_spec(result.model_spec, task.model_spec, servable, signature)
            if task.method_name == tfs_examples.CLASSIFY:
                self._fill(result.classification_result, task.method_name, answer)
            else:
                self._fill(result.regression_result, task.method_name, answer)
        return reply

    def get_model_metadata(self, request):
        version, label = self._spec(request.model_spec)
        fields = list(request.metadata_field) or ["signature_def"]
        if fields != ["signature_def"]:
            raise InputError("metadata_field must be 'signature_def'")
        from shipyard.formats.tf_protos import types_enum

        servable = self.manager.resolve(request.model_spec.name, version, label)
        sigmap = tpb.SignatureDefMap()
        for key, sig in protocol.tfs_signature(servable).items():
            target = sigmap.signature_def[key]
            target.method_name = sig["method_name"]
            for side in ("inputs", "outputs"):
                for name, info in sig[side].items():
                    ti = getattr(target, side)[name]
                    ti.name = name
                    ti.dtype = types_enum(info["dtype"])
                    if info["tensor_shape"].get("unknown_rank"):
                        ti.tensor_shape.unknown_rank = True
                    for d in info["tensor_shape"].get("dim", []):
                        ti.tensor_shape.dim.add().size = int(d["size"])
        reply = tpb.GetModelMetadataResponse()
        reply.model_spec.name = request.model_spec.name
        reply.model_spec.version.value = servable.version
        any_msg = reply.metadata["signature_def"]
        any_msg.type_url = SIGNATURE_DEF_MAP_URL  # TF Serving's public type name, which clients unpack by
        any_msg.value = sigmap.SerializeToString()
        return reply

    def get_model_status(self, request):
        version, label = self._spec(request.model_spec)
        reply = tpb.GetModelStatusResponse()
        for s in protocol.tfs_status(self.manager, request.model_spec.name, version, label):
            entry = reply.model_version_status.add()
            entry.version = int(s["version"])
            entry.state = {"LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}[s["state"]]
            entry.status.error_code = 0 if s["status"]["error_code"] == "OK" else 2
            entry.status.error_message = s["status"]["error_message"]
        return reply

    # -- KServe v2 ------------------------------------------------------------------------------

    def model_ready(self, request):
        self.manager.model(request.name)
        return kpb.ModelReadyResponse(ready=protocol.kserve_ready(self.manager, request.name,
                                                                  protocol.parse_version(request.version)))

    def model_metadata(self, request):
        meta = protocol.kserve_metadata(self.manager, request.name, protocol.parse_version(request.version))
        reply = kpb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for side in ("inputs", "outputs"):
            for t in meta[side]:
                getattr(reply, side).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return reply

    def model_infer(self, request):
        version = protocol.parse_version(request.model_version)
        limits = self.limits(self.manager.resolve(request.model_name, version))
        infer = inference.from_grpc(request, limits)
        servable, future = self.manager.submit(request.model_name, infer.inputs, version)
        reply = kpb.ModelInferResponse()
        inference.to_grpc(inference.InferResponse(request.model_name, str(servable.version),
                                                  inference.outputs_for(infer, future.result()), infer.id), reply)
        return reply

def start_grpc(api: GrpcAPI, host: str, port: int, workers: int = 16, reuse_port: bool = False) -> tuple[grpc.Server, int]:
    # SO_REUSEPORT only for worker processes sharing one port; otherwise a busy port must fail.
    options = [("grpc.max_receive_message_length", api.max_request_bytes),
               ("grpc.max_send_message_length", 256 << 20), ("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"), options=options)
    server.add_generic_rpc_handlers(api.handlers())
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio >= 1.60 raises where older versions returned 0
        bound = 0
    if bound == 0:
        from shipyard.errors import UsageError

        raise UsageError(f"cannot listen for gRPC on {host}:{port}", hint="pick another --grpc-port, or 0 for any free port")
    server.start()
    return server, bound
