/* common.h - command line, paths and timing shared by the generated programs (plain C99
 * that also compiles as C++).
 *
 *   run_model [--model FILE] [--inputs DIR] [--outputs DIR] [--repeat N] [--threads N]
 *             [--key-file KEY]
 */
#ifndef SHIPYARD_COMMON_H
#define SHIPYARD_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Where the programs print their own error lines: stderr, unless a runtime's start-up chatter
 * had to be sent away from stderr (see tf_common.h), in which case a copy of the real stderr. */
static FILE *shipyard_err_stream = NULL;
#define SHIPYARD_ERR (shipyard_err_stream ? shipyard_err_stream : stderr)

/* One model input or output as shipyard detected it: name, file in the inputs/outputs folder,
 * element type (numpy kind and size), rank (-1 unknown) and shape (-1: any size). */
typedef struct {
  const char *name;
  const char *file;
  char kind;
  int itemsize;
  int ndim;
  int64_t shape[16];
  int scalar; /* libtorch: passed as a number (int/float argument), not a tensor */
} shipyard_tensor;

typedef struct {
  const char *model;    /* the model file (default: the one shipped in the project) */
  const char *inputs;   /* folder with one NAME.npy per input */
  const char *outputs;  /* folder that receives one NAME.npy per output (must exist) */
  const char *key_file; /* key of an encrypted model (default: $SHIPYARD_MODEL_KEY_FILE) */
  int repeat;           /* timed runs after one warm-up run */
  int threads;          /* intra-op threads, 0 = the runtime's default */
  int steps;            /* session workflow: train steps */
  const char *restore;  /* session workflow: checkpoint prefix to restore (else: run init) */
  const char *save;     /* session workflow: checkpoint prefix to save to */
} shipyard_args;

static void shipyard_usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [--model FILE] [--inputs DIR] [--outputs DIR] [--repeat N] [--threads N] [--key-file KEY]"
          " [--steps N] [--restore PREFIX] [--save PREFIX]\n", prog);
}

/* Returns 0 when the arguments parse; prints usage and returns 2 otherwise. */
static int shipyard_parse_args(int argc, char **argv, shipyard_args *a, const char *default_model) {
  int i;
  a->model = default_model;
  a->inputs = "inputs";
  a->outputs = "outputs";
  a->key_file = getenv("SHIPYARD_MODEL_KEY_FILE");
  a->repeat = 1;
  a->threads = 0;
  a->steps = 0;
  a->restore = NULL;
  a->save = NULL;
  for (i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) { shipyard_usage(argv[0]); exit(0); }
    if (!v) { shipyard_usage(argv[0]); return 2; }
    if (strcmp(argv[i], "--model") == 0) a->model = v;
    else if (strcmp(argv[i], "--inputs") == 0) a->inputs = v;
    else if (strcmp(argv[i], "--outputs") == 0) a->outputs = v;
    else if (strcmp(argv[i], "--key-file") == 0) a->key_file = v;
    else if (strcmp(argv[i], "--repeat") == 0) a->repeat = atoi(v);
    else if (strcmp(argv[i], "--threads") == 0) a->threads = atoi(v);
    else if (strcmp(argv[i], "--steps") == 0) a->steps = atoi(v);
    else if (strcmp(argv[i], "--restore") == 0) a->restore = v;
    else if (strcmp(argv[i], "--save") == 0) a->save = v;
    else { shipyard_usage(argv[0]); return 2; }
    i++;
  }
  if (a->repeat < 1 || a->threads < 0 || a->steps < 0) { shipyard_usage(argv[0]); return 2; }
  return 0;
}

/* A whole file in memory (malloc'ed), NULL when it cannot be read. */
static unsigned char *shipyard_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf;
  long size;
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = (unsigned char *)malloc(size > 0 ? (size_t)size : 1);
  if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) { free(buf); fclose(f); return NULL; }
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static void shipyard_join(char *out, size_t len, const char *dir, const char *file) {
  snprintf(out, len, "%s/%s", dir, file);
}

static double shipyard_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int shipyard_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of n timings (sorts them in place). */
static double shipyard_median(double *ms, int n) {
  qsort(ms, (size_t)n, sizeof *ms, shipyard_cmp_double);
  return n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
}

/* Check an array's shape against the model's (-1: any size). Returns 0 when it fits. */
static int shipyard_check_shape(const char *name, int ndim, const int64_t *shape, int want_ndim,
                                const int64_t *want) {
  int i;
  if (want_ndim < 0) return 0;  /* rank unknown */
  if (ndim != want_ndim) {
    fprintf(SHIPYARD_ERR, "error: input '%s': expected rank %d, got rank %d\n", name, want_ndim, ndim);
    return 1;
  }
  for (i = 0; i < ndim; i++) {
    if (want[i] >= 0 && want[i] != shape[i]) {
      fprintf(SHIPYARD_ERR, "error: input '%s': dimension %d must be %lld, got %lld\n", name, i, (long long)want[i],
              (long long)shape[i]);
      return 1;
    }
  }
  return 0;
}

#endif /* SHIPYARD_COMMON_H */
