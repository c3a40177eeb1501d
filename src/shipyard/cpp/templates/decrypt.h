/* decrypt.h - read a shipyard-encrypted model into memory (AES-256-GCM, OpenSSL EVP).
 *
 * Written by shipyard into a generated project whose model is encrypted. The plaintext only
 * ever lives in memory: the program hands the buffer to the runtime's load-from-memory call.
 * File layout (docs/protect.md), every header byte authenticated as GCM associated data:
 *   "SHIPYENC" | version u8 (1) | algorithm u8 (1 = AES-256-GCM) | nonce[12] | kind u8
 *   (0 one file, 1 tar of a folder) | format length u8 + ASCII | name length u16 LE + UTF-8
 *   | ciphertext | tag[16]
 * The key file holds the 32-byte key raw, as hex, or as base64 (what `shipyard keygen` writes).
 * Plain C that also compiles as C++; link with OpenSSL's libcrypto.
 */
#ifndef SHIPYARD_DECRYPT_H
#define SHIPYARD_DECRYPT_H

#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* The 32-byte key from a key file (raw, hex or base64); returns 0 on success. */
static int shipyard_read_key(const char *path, unsigned char key[32], char *err, size_t errlen) {
  size_t len = 0, start = 0, end, i;
  unsigned char *text = shipyard_read_file(path, &len);
  unsigned char decoded[64];
  int n;
  if (!text) { snprintf(err, errlen, "%s: the key file cannot be read", path); return 1; }
  if (len == 32) { memcpy(key, text, 32); free(text); return 0; }
  end = len;
  while (start < end && isspace(text[start])) start++;
  while (end > start && isspace(text[end - 1])) end--;
  if (end - start == 64) {
    for (i = 0; i < 32; i++) {
      unsigned int byte;
      char pair[3] = {(char)text[start + 2 * i], (char)text[start + 2 * i + 1], 0};
      if (!isxdigit((unsigned char)pair[0]) || !isxdigit((unsigned char)pair[1])) break;
      sscanf(pair, "%x", &byte);
      key[i] = (unsigned char)byte;
    }
    if (i == 32) { free(text); return 0; }
  }
  if (end - start == 44) {
    n = EVP_DecodeBlock(decoded, text + start, 44);  /* counts '=' padding as zero bytes */
    if (n == 33 && text[end - 1] == '=') {
      memcpy(key, decoded, 32);
      free(text);
      return 0;
    }
  }
  free(text);
  snprintf(err, errlen, "%s: not a 256-bit key (expected 32 bytes, raw, hex or base64)", path);
  return 1;
}

/* Decrypt a shipyard-encrypted model file; *plain is malloc'ed. Returns 0 on success. */
static int shipyard_decrypt(const char *path, const unsigned char key[32], const char *want_format,
                            unsigned char **plain, size_t *plain_len, char *err, size_t errlen) {
  size_t len = 0, pos, hlen, clen;
  unsigned char *data = shipyard_read_file(path, &len);
  const unsigned char *nonce;
  unsigned int flen, nlen;
  EVP_CIPHER_CTX *ctx;
  int outl = 0, finl = 0, ok;
  *plain = NULL;
  if (!data) { snprintf(err, errlen, "%s: cannot be read", path); return 1; }
  if (len < 8 + 16 + 2 + 16 || memcmp(data, "SHIPYENC", 8) != 0) {
    snprintf(err, errlen, "%s: not a shipyard-encrypted file", path); free(data); return 1;
  }
  if (data[8] != 1 || data[9] != 1) {
    snprintf(err, errlen, "%s: encrypted with an unknown version or algorithm", path); free(data); return 1;
  }
  nonce = data + 10;
  if (data[22] != 0) {
    snprintf(err, errlen, "%s: an encrypted folder (tar); this program reads one encrypted file", path);
    free(data); return 1;
  }
  flen = data[23];
  pos = 24 + flen;
  if (pos + 2 > len) goto damaged;
  if (want_format && (strlen(want_format) != flen || memcmp(data + 24, want_format, flen) != 0)) {
    snprintf(err, errlen, "%s: holds a %.*s model, not %s", path, (int)flen, (const char *)data + 24, want_format);
    free(data); return 1;
  }
  nlen = (unsigned int)data[pos] | ((unsigned int)data[pos + 1] << 8);
  hlen = pos + 2 + nlen;
  if (hlen + 16 > len) goto damaged;
  clen = len - hlen - 16;
  *plain = (unsigned char *)malloc(clen ? clen : 1);
  ctx = EVP_CIPHER_CTX_new();
  ok = *plain && ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
       EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
       EVP_DecryptUpdate(ctx, NULL, &outl, data, (int)hlen) == 1 &&  /* the header: associated data */
       EVP_DecryptUpdate(ctx, *plain, &outl, data + hlen, (int)clen) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, data + len - 16) == 1 &&
       EVP_DecryptFinal_ex(ctx, *plain + outl, &finl) == 1;
  EVP_CIPHER_CTX_free(ctx);
  free(data);
  if (!ok) {
    free(*plain);
    *plain = NULL;
    snprintf(err, errlen, "%s: authentication failed: wrong key, or the file was modified after encryption", path);
    return 1;
  }
  *plain_len = (size_t)(outl + finl);
  return 0;
damaged:
  snprintf(err, errlen, "%s: the encrypted file's header is damaged", path);
  free(data);
  return 1;
}

#endif /* SHIPYARD_DECRYPT_H */
