/*
 * utf8.c - strict UTF-8 validation (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF).
 */
#include "internal.h"

#include <string.h>

size_t stc__utf8_sequence_length(const uint8_t *p, const uint8_t *end) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    size_t avail = (size_t)(end - p);
    if (c >= 0xC2 && c <= 0xDF) {
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && p[1] > 0x9F) return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] > 0x8F) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

size_t stc__utf8_valid_prefix(const uint8_t *text, size_t len) {
    const uint8_t *p = text, *end = text + len;
    while (p < end) {
        /* ASCII runs are the common case: take them eight bytes at a time. */
        while (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if (word & UINT64_C(0x8080808080808080)) break;
            p += 8;
        }
        if (p == end) break;
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t n = stc__utf8_sequence_length(p, end);
        if (n == 0) break;
        p += n;
    }
    return (size_t)(p - text);
}
