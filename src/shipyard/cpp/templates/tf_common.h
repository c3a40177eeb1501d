/* tf_common.h - TensorFlow C API helpers shared by the generated programs (plain C). */
#ifndef SHIPYARD_TF_COMMON_H
#define SHIPYARD_TF_COMMON_H

#include <fcntl.h>
#include <tensorflow/c/c_api.h>
#include <unistd.h>

#include "common.h"
#include "npy.h"

/* TensorFlow prints start-up banners (oneDNN, CPU features, MLIR passes) straight to stderr,
 * some from its worker threads at the first run, and TF_CPP_MIN_LOG_LEVEL does not silence them
 * all. So the program's stderr (fd 2) goes to /dev/null and the program prints its own error
 * lines to a copy of the real stderr; TensorFlow reports errors through TF_Status, which the
 * program prints. SHIPYARD_VERBOSE=1 keeps TensorFlow's own messages. */
static void tf_quiet(void) {
  int null_fd, saved;
  if (getenv("SHIPYARD_VERBOSE") || shipyard_err_stream) return;
  fflush(stderr);
  saved = dup(2);
  null_fd = open("/dev/null", O_WRONLY);
  if (saved < 0 || null_fd < 0) return;
  shipyard_err_stream = fdopen(saved, "w");
  if (!shipyard_err_stream) return;
  setvbuf(shipyard_err_stream, NULL, _IONBF, 0);
  dup2(null_fd, 2);
  close(null_fd);
}

static TF_DataType tf_type(char kind, int itemsize) {
  if (kind == 'f') return itemsize == 8 ? TF_DOUBLE : itemsize == 2 ? TF_HALF : TF_FLOAT;
  if (kind == 'b') return TF_BOOL;
  if (kind == 'u') return itemsize == 1 ? TF_UINT8 : itemsize == 2 ? TF_UINT16 : itemsize == 4 ? TF_UINT32 : TF_UINT64;
  return itemsize == 1 ? TF_INT8 : itemsize == 2 ? TF_INT16 : itemsize == 4 ? TF_INT32 : TF_INT64;
}

/* The .npy element type of a TF tensor type; 0 when .npy cannot hold it (strings). */
static int npy_type_of(TF_DataType t, char *kind, int *itemsize) {
  switch (t) {
    case TF_FLOAT: *kind = 'f'; *itemsize = 4; return 1;
    case TF_DOUBLE: *kind = 'f'; *itemsize = 8; return 1;
    case TF_HALF: *kind = 'f'; *itemsize = 2; return 1;
    case TF_INT64: *kind = 'i'; *itemsize = 8; return 1;
    case TF_INT32: *kind = 'i'; *itemsize = 4; return 1;
    case TF_INT16: *kind = 'i'; *itemsize = 2; return 1;
    case TF_INT8: *kind = 'i'; *itemsize = 1; return 1;
    case TF_UINT8: *kind = 'u'; *itemsize = 1; return 1;
    case TF_UINT16: *kind = 'u'; *itemsize = 2; return 1;
    case TF_BOOL: *kind = 'b'; *itemsize = 1; return 1;
    default: return 0;
  }
}

/* "dense/BiasAdd:1" -> the op's output 1; "x" means "x:0". */
static TF_Output tf_output(TF_Graph *graph, const char *name) {
  char op[1024];
  const char *colon = strrchr(name, ':');
  TF_Output out;
  size_t n = colon ? (size_t)(colon - name) : strlen(name);
  if (n >= sizeof op) n = sizeof op - 1;
  memcpy(op, name, n);
  op[n] = 0;
  out.oper = TF_GraphOperationByName(graph, op);
  out.index = colon ? atoi(colon + 1) : 0;
  return out;
}

/* An input tensor from a .npy file, checked against the model's shape; NULL on error. */
static TF_Tensor *tf_read_input(const shipyard_tensor *spec, const char *dir) {
  char path[4096], err[1024];
  npy_array a;
  TF_Tensor *t;
  shipyard_join(path, sizeof path, dir, spec->file);
  if (npy_read(path, &a, err, sizeof err) != 0) {
    fprintf(SHIPYARD_ERR, "error: input '%s': %s\n", spec->name, err);
    return NULL;
  }
  if (shipyard_check_shape(spec->name, a.ndim, a.shape, spec->ndim, spec->shape) != 0) { npy_free(&a); return NULL; }
  if (a.kind != spec->kind || a.itemsize != spec->itemsize) {
    fprintf(SHIPYARD_ERR, "error: input '%s': expected %c%d values, %s holds %c%d\n", spec->name, spec->kind,
            spec->itemsize, path, a.kind, a.itemsize);
    npy_free(&a);
    return NULL;
  }
  t = TF_AllocateTensor(tf_type(a.kind, a.itemsize), a.shape, a.ndim, a.nbytes);
  if (a.nbytes) memcpy(TF_TensorData(t), a.data, a.nbytes);
  npy_free(&a);
  return t;
}

/* Write a tensor as .npy into dir; returns 0 on success. */
static int tf_write_output(const shipyard_tensor *spec, const char *dir, TF_Tensor *t) {
  char path[4096], kind;
  int64_t shape[16];
  int i, nd = TF_NumDims(t), itemsize;
  if (!npy_type_of(TF_TensorType(t), &kind, &itemsize)) {
    fprintf(SHIPYARD_ERR, "error: output '%s' has TF type %d, which .npy here cannot hold\n", spec->name, (int)TF_TensorType(t));
    return 1;
  }
  for (i = 0; i < nd && i < 16; i++) shape[i] = TF_Dim(t, i);
  shipyard_join(path, sizeof path, dir, spec->file);
  if (npy_write(path, kind, itemsize, nd, shape, TF_TensorData(t)) != 0) {
    fprintf(SHIPYARD_ERR, "error: cannot write %s\n", path);
    return 1;
  }
  printf("output %s %c%d[", spec->name, kind, itemsize * 8);
  for (i = 0; i < nd; i++) printf(i ? ",%lld" : "%lld", (long long)shape[i]);
  printf("] -> %s\n", path);
  return 0;
}

/* Session options with N intra-op threads (a serialized ConfigProto, the C API's only way). */
static TF_SessionOptions *tf_session_options(int threads, TF_Status *status) {
  TF_SessionOptions *opts = TF_NewSessionOptions();
  if (threads > 0 && threads < 128) {
    /* field 2 intra_op_parallelism_threads, field 5 inter_op_parallelism_threads (varints) */
    unsigned char config[4] = {0x10, (unsigned char)threads, 0x28, 1};
    TF_SetConfig(opts, config, sizeof config, status);
  }
  return opts;
}

/* Import a serialized GraphDef; returns NULL (and prints why) when TensorFlow refuses it. */
static TF_Graph *tf_import(const unsigned char *data, size_t len, const char *what, TF_Status *status) {
  TF_Graph *graph = TF_NewGraph();
  TF_Buffer *buf = TF_NewBufferFromString(data, len);
  TF_ImportGraphDefOptions *opts = TF_NewImportGraphDefOptions();
  TF_GraphImportGraphDef(graph, buf, opts, status);
  TF_DeleteImportGraphDefOptions(opts);
  TF_DeleteBuffer(buf);
  if (TF_GetCode(status) != TF_OK) {
    fprintf(SHIPYARD_ERR, "error: %s: TensorFlow cannot import the graph: %s\n", what, TF_Message(status));
    TF_DeleteGraph(graph);
    return NULL;
  }
  return graph;
}

#endif /* SHIPYARD_TF_COMMON_H */
