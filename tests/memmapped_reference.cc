// TF's own memmapped writer, as a yardstick for shipyard's (tests/test_memmapped.py builds it).
//
// The body of ConvertConstantsToImmutable from tensorflow/contrib/util/
// convert_graphdef_memmapped_format_lib.cc (the convert_graphdef_memmapped_format tool, which no
// wheel ships), compiled against the tensorflow wheel's headers and run with the wheel's
// tensorflow::MemmappedFileSystemWriter and Tensor::FromProto: the file it writes is laid out by
// TensorFlow's code, not by shipyard's.
//
//   memmapped_reference IN.pb OUT.mmpb MIN_BYTES
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_set>

#include "tensorflow/core/framework/graph.pb.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/util/memmapped_file_system.h"
#include "tensorflow/core/util/memmapped_file_system_writer.h"

using namespace tensorflow;

static bool IsPod(DataType t) {  // TF_CALL_POD_TYPES: the number types and bool
  switch (t) {
    case DT_FLOAT: case DT_DOUBLE: case DT_HALF: case DT_BFLOAT16: case DT_COMPLEX64: case DT_COMPLEX128:
    case DT_INT8: case DT_UINT8: case DT_INT16: case DT_UINT16: case DT_INT32: case DT_UINT32:
    case DT_INT64: case DT_UINT64: case DT_BOOL:
      return true;
    default:
      return false;
  }
}

static std::string Sanitize(const std::string& name) {
  std::string out;
  for (char c : name) {
    out += ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.') ? c : '_';
  }
  return out;
}

static int Fail(const absl::Status& s) {
  fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  Env* env = Env::Default();
  GraphDef graph;
  absl::Status s = ReadBinaryProto(env, argv[1], &graph);
  if (!s.ok()) return Fail(s);
  MemmappedFileSystemWriter writer;
  s = writer.InitializeToFile(env, argv[2]);
  if (!s.ok()) return Fail(s);
  const size_t min_bytes = static_cast<size_t>(atol(argv[3]));
  std::unordered_set<std::string> used;
  for (int i = 0; i < graph.node_size(); ++i) {
    NodeDef* node = graph.mutable_node(i);
    if (node->op() != "Const") continue;
    const TensorProto& proto = node->attr().at("value").tensor();
    const DataType dtype = proto.dtype();
    const TensorShapeProto shape = proto.tensor_shape();
    if (!IsPod(dtype)) continue;
    Tensor parsed(dtype);
    if (!parsed.FromProto(proto)) return 3;
    if (parsed.TotalBytes() < min_bytes) continue;
    std::string region = Sanitize(node->name());
    while (!used.insert(region).second) region += '_';
    region = std::string(MemmappedFileSystem::kMemmappedPackagePrefix) + region;
    s = writer.SaveTensor(parsed, region);
    if (!s.ok()) return Fail(s);
    node->set_op("ImmutableConst");
    auto* attr = node->mutable_attr();
    attr->clear();
    (*attr)["dtype"].set_type(dtype);
    *(*attr)["shape"].mutable_shape() = shape;
    (*attr)["memory_region_name"].set_s(region);
  }
  s = writer.SaveProtobuf(graph, MemmappedFileSystem::kMemmappedPackageDefaultGraphDef);
  if (!s.ok()) return Fail(s);
  s = writer.FlushAndClose();
  if (!s.ok()) return Fail(s);
  return 0;
}
