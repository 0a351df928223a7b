/*
 * sniff.c - recognising files that are not safetensors at all.
 *
 * Only consulted once a file has failed the header-length checks, so that a
 * user who points the loader at a pickle, a zip or a Git LFS pointer learns
 * what the file is instead of reading "header too large".
 */
#include "internal.h"

#include <string.h>

static bool starts_with(const uint8_t *head, size_t len, const char *magic) {
    size_t n = strlen(magic);
    return len >= n && memcmp(head, magic, n) == 0;
}

const char *stc__sniff_foreign_format(const uint8_t *head, size_t len) {
    if (len >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5)
        return "this is a Python pickle (for example a PyTorch checkpoint in the legacy "
               "format), not a safetensors file; loading it would run code";
    if (starts_with(head, len, "PK\x03\x04") || starts_with(head, len, "PK\x05\x06"))
        return "this is a ZIP archive (for example a PyTorch .bin/.pt checkpoint or an "
               ".npz file), not a safetensors file";
    if (starts_with(head, len, "version https://git-lfs"))
        return "this is a Git LFS pointer, not the file itself: fetch the real file "
               "with `git lfs pull`";
    if (starts_with(head, len, "\x93NUMPY"))
        return "this is a NumPy .npy file, not a safetensors file";
    if (starts_with(head, len, "\x1f\x8b"))
        return "this is a gzip-compressed file; decompress it first";
    if (starts_with(head, len, "\x89HDF\r\n\x1a\n"))
        return "this is an HDF5 file (for example a Keras .h5 model), not a safetensors file";
    if (starts_with(head, len, "GGUF"))
        return "this is a GGUF file, not a safetensors file";
    /* Text that starts like markup: an HTML error page saved by a download. */
    size_t i = 0;
    while (i < len && (head[i] == ' ' || head[i] == '\t' || head[i] == '\r' ||
                       head[i] == '\n' || head[i] == 0xEF || head[i] == 0xBB ||
                       head[i] == 0xBF))
        i++;
    if (i < len && head[i] == '<')
        return "this is an HTML or XML document (perhaps an error page saved by a "
               "download), not a safetensors file";
    if (i < len && (head[i] == '{' || head[i] == '['))
        return "this is a JSON text (perhaps an index file such as "
               "model.safetensors.index.json), not a safetensors file";
    /* Eight or more bytes of text: as a length they would be an absurd
     * header size, which is not the useful thing to say. */
    if (len >= 8) {
        size_t n = len < 64 ? len : 64;
        size_t valid = stc__utf8_valid_prefix(head, n);
        bool text = n - valid < 4; /* a character may be cut at the end */
        for (size_t k = 0; text && k < valid; k++)
            if (head[k] < 0x20 && head[k] != '\t' && head[k] != '\n' && head[k] != '\r')
                text = false;
        if (text && valid >= 8)
            return "this is a text file, not a safetensors file (a safetensors file starts "
                   "with an 8-byte header length, then a JSON header)";
    }
    return NULL;
}
