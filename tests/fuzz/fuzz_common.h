/*
 * fuzz_common.h - helpers shared by the fuzz targets: a checked-assertion
 * macro and a reader that turns the fuzzer's bytes into decisions.
 * Header-only, so that each target builds as core sources + one file.
 */
#ifndef STC_FUZZ_COMMON_H
#define STC_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Fails loudly: libFuzzer records abort() as a crash with the input. */
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* Consumes the input front to back; past the end every read yields 0, so
 * short inputs still describe a complete (small) case. */
typedef struct fuzz_input {
    const uint8_t *p;
    size_t len, pos;
} fuzz_input;

static inline uint8_t take_u8(fuzz_input *in) {
    return in->pos < in->len ? in->p[in->pos++] : 0;
}

static inline uint64_t take_u64(fuzz_input *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)take_u8(in) << (8 * i);
    return v;
}

/* A value in [0, n), n > 0. */
static inline unsigned take_below(fuzz_input *in, unsigned n) {
    return (unsigned)(take_u8(in) % n);
}

/* Deterministic filler bytes for tensor data (xorshift64*). */
static inline uint8_t next_filler(uint64_t *state) {
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (uint8_t)((x * 0x2545F4914F6CDD1Du) >> 56);
}

/* Independent strict UTF-8 check (RFC 3629), not the core's. */
static inline int fuzz_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1Fu;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0Fu;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07u;
        } else {
            return 0;
        }
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

#endif /* STC_FUZZ_COMMON_H */
