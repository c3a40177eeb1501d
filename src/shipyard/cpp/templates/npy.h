/* npy.h - read and write NumPy .npy files (format versions 1-3, little-endian, C order).
 *
 * Written by shipyard into every generated project. It is self-contained on purpose: none of
 * the runtimes (TensorFlow C API, libtorch, ONNX Runtime, LiteRT) reads .npy, and a hundred
 * lines of C here spare the project a third-party dependency that Debian or the wheels would
 * have to provide. It is plain C99 that also compiles as C++, so the C and C++ programs share it.
 *
 * Sizes are checked against the file before any memory is allocated: a header that claims a
 * huge shape gets an error, not a huge malloc.
 */
#ifndef SHIPYARD_NPY_H
#define SHIPYARD_NPY_H

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAX_DIMS 16

typedef struct {
  char kind;        /* 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool */
  int itemsize;     /* bytes per element */
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  int64_t count;    /* number of elements */
  void *data;       /* count * itemsize bytes, owned: release with npy_free */
  size_t nbytes;
} npy_array;

static void npy_free(npy_array *a) {
  free(a->data);
  a->data = NULL;
}

/* The dtype string NumPy writes for (kind, itemsize): "<f4", "|u1", "|b1", ... */
static void npy_descr(char kind, int itemsize, char out[8]) {
  snprintf(out, 8, "%c%c%d", itemsize == 1 ? '|' : '<', kind, itemsize);
}

/* Returns 0 on success; otherwise writes a one-line reason into err. */
static int npy_read(const char *path, npy_array *out, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  unsigned char magic[8];
  uint32_t hlen = 0;
  char *header = NULL, *p;
  long data_start, file_end;
  memset(out, 0, sizeof *out);
  if (!f) { snprintf(err, errlen, "%s: cannot be opened", path); return 1; }
  if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "\x93NUMPY", 6) != 0) {
    snprintf(err, errlen, "%s: not a .npy file", path); fclose(f); return 1;
  }
  if (magic[6] == 1) {
    unsigned char b[2];
    if (fread(b, 1, 2, f) != 2) goto truncated;
    hlen = (uint32_t)b[0] | ((uint32_t)b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) goto truncated;
    hlen = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
  } else {
    snprintf(err, errlen, "%s: unknown .npy version %d", path, magic[6]); fclose(f); return 1;
  }
  if (hlen > 65536) { snprintf(err, errlen, "%s: .npy header too long", path); fclose(f); return 1; }
  header = (char *)calloc(hlen + 1, 1);
  if (!header || fread(header, 1, hlen, f) != hlen) { free(header); goto truncated; }
  p = strstr(header, "'descr'");
  if (!p || !(p = strchr(p + 7, '\''))) goto bad_header;
  if ((p[1] != '<' && p[1] != '|') || !strchr("fiub", p[2])) {
    snprintf(err, errlen, "%s: unsupported dtype (need little-endian float, int, uint or bool)", path);
    free(header); fclose(f); return 1;
  }
  out->kind = p[2];
  out->itemsize = atoi(p + 3);
  if (out->itemsize != 1 && out->itemsize != 2 && out->itemsize != 4 && out->itemsize != 8) goto bad_header;
  p = strstr(header, "'fortran_order'");
  if (!p) goto bad_header;
  p += strlen("'fortran_order'");
  while (*p == ' ' || *p == ':') p++;
  if (strncmp(p, "True", 4) == 0) {
    snprintf(err, errlen, "%s: Fortran-order arrays are not supported (save with np.ascontiguousarray)", path);
    free(header); fclose(f); return 1;
  }
  p = strstr(header, "'shape'");
  if (!p || !(p = strchr(p, '('))) goto bad_header;
  p++;
  out->count = 1;
  while (*p && *p != ')') {
    char *end;
    long long d;
    while (*p == ' ' || *p == ',') p++;
    if (*p == ')') break;
    if (!isdigit((unsigned char)*p) || out->ndim >= NPY_MAX_DIMS) goto bad_header;
    d = strtoll(p, &end, 10);
    if (d < 0 || (d > 0 && out->count > INT64_MAX / d)) goto bad_header;
    out->shape[out->ndim++] = d;
    out->count *= d;
    p = end;
  }
  free(header);
  header = NULL;
  data_start = ftell(f);
  fseek(f, 0, SEEK_END);
  file_end = ftell(f);
  if (out->count > (int64_t)((file_end - data_start) / out->itemsize)) {
    snprintf(err, errlen, "%s: truncated (the header declares %lld elements, the file holds fewer)", path,
             (long long)out->count);
    fclose(f); return 1;
  }
  fseek(f, data_start, SEEK_SET);
  out->nbytes = (size_t)out->count * (size_t)out->itemsize;
  out->data = malloc(out->nbytes ? out->nbytes : 1);
  if (!out->data || fread(out->data, 1, out->nbytes, f) != out->nbytes) { npy_free(out); goto truncated; }
  fclose(f);
  return 0;
truncated:
  snprintf(err, errlen, "%s: truncated .npy file", path);
  fclose(f);
  return 1;
bad_header:
  snprintf(err, errlen, "%s: cannot read the .npy header", path);
  free(header);
  fclose(f);
  return 1;
}

/* Write a C-order array; returns 0 on success. */
static int npy_write(const char *path, char kind, int itemsize, int ndim, const int64_t *shape, const void *data) {
  char descr[8], dict[512], shape_text[400] = "";
  size_t count = 1, len, pad;
  int i;
  FILE *f;
  npy_descr(kind, itemsize, descr);
  for (i = 0; i < ndim; i++) {
    char dim[32];
    snprintf(dim, sizeof dim, "%lld%s", (long long)shape[i], (ndim == 1 || i + 1 < ndim) ? "," : "");
    strncat(shape_text, dim, sizeof shape_text - strlen(shape_text) - 1);
    count *= (size_t)shape[i];
  }
  snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, shape_text);
  len = strlen(dict);
  pad = 64 - (10 + len + 1) % 64;  /* the header ends with '\n' and aligns the data to 64 bytes */
  f = fopen(path, "wb");
  if (!f) return 1;
  fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  {
    unsigned char b[2];
    size_t hl = len + pad + 1;
    b[0] = (unsigned char)(hl & 0xff);
    b[1] = (unsigned char)(hl >> 8);
    fwrite(b, 1, 2, f);
  }
  fwrite(dict, 1, len, f);
  for (i = 0; i < (int)pad; i++) fputc(' ', f);
  fputc('\n', f);
  if (count && fwrite(data, (size_t)itemsize, count, f) != count) { fclose(f); return 1; }
  return fclose(f) != 0;
}

#endif /* SHIPYARD_NPY_H */
