/*
 * test_stats.c - tensor statistics and histograms: the value of every code
 * of the small float types, the counting rules (NaN, infinities, zeros, -0.0,
 * subnormals), empty input, results that do not depend on the number of
 * threads, partial results that merge, bad arguments and failed allocations.
 *
 * Built as its own binary (build/test_stats, see the Makefile): the core's
 * statistics start threads.
 */
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static stc_stats stats_of(stc_dtype dtype, const void *data, size_t nbytes, unsigned threads) {
    stc_stats s;
    stc_error err;
    memset(&s, 0xAB, sizeof s);
    CHECK_OK(stc_stats_compute(dtype, data, nbytes, threads, NULL, &s, &err), &err);
    return s;
}

/* The one value a single code decodes to, through the statistics. */
static double value_of(stc_dtype dtype, const uint8_t *bytes, size_t nbytes) {
    stc_stats s = stats_of(dtype, bytes, nbytes, 1);
    if (s.nan) return NAN;
    return s.max;
}

static int same_stats(const stc_stats *a, const stc_stats *b) {
    return a->count == b->count && a->nan == b->nan && a->inf == b->inf &&
           a->zeros == b->zeros && a->finite == b->finite &&
           memcmp(&a->min, &b->min, sizeof a->min) == 0 &&
           memcmp(&a->max, &b->max, sizeof a->max) == 0 &&
           memcmp(&a->mean, &b->mean, sizeof a->mean) == 0 &&
           memcmp(&a->m2, &b->m2, sizeof a->m2) == 0;
}

/* MARK: - Decoding */

static void test_small_float_codes(void) {
    uint8_t b[1];
    b[0] = 0x7E; CHECK(value_of(STC_F8_E4M3, b, 1) == 448.0);
    b[0] = 0x7F; CHECK(isnan(value_of(STC_F8_E4M3, b, 1)));
    b[0] = 0x01; CHECK(value_of(STC_F8_E4M3, b, 1) == ldexp(1.0, -9)); /* smallest subnormal */
    b[0] = 0x7B; CHECK(value_of(STC_F8_E5M2, b, 1) == 57344.0);
    b[0] = 0x7C; CHECK(isinf(value_of(STC_F8_E5M2, b, 1)));
    b[0] = 0x7D; CHECK(isnan(value_of(STC_F8_E5M2, b, 1)));
    b[0] = 0x7F; CHECK(value_of(STC_F8_E8M0, b, 1) == 1.0);
    b[0] = 0x00; CHECK(value_of(STC_F8_E8M0, b, 1) == ldexp(1.0, -127));
    b[0] = 0xFF; CHECK(isnan(value_of(STC_F8_E8M0, b, 1)));
    b[0] = 0x80; CHECK(isnan(value_of(STC_F8_E4M3FNUZ, b, 1)));
    b[0] = 0x7F; CHECK(value_of(STC_F8_E4M3FNUZ, b, 1) == 240.0);
    b[0] = 0x80; CHECK(isnan(value_of(STC_F8_E5M2FNUZ, b, 1)));
    b[0] = 0x7F; CHECK(value_of(STC_F8_E5M2FNUZ, b, 1) == 57344.0);
    /* F4: two values per byte, the first in the low nibble: 6.0 and 0.5 */
    b[0] = 0x17;
    stc_stats s = stats_of(STC_F4, b, 1, 1);
    CHECK(s.count == 2 && s.max == 6.0 && s.min == 0.5 && s.mean == 3.25);
    /* F6: 24-bit little-endian words, value i in bits [6i, 6i + 6) */
    uint8_t g[3] = {0x1F, 0, 0}; /* values 0x1F, 0, 0, 0 */
    s = stats_of(STC_F6_E2M3, g, 3, 1);
    CHECK(s.count == 4 && s.max == 7.5 && s.zeros == 3);
    s = stats_of(STC_F6_E3M2, g, 3, 1);
    CHECK(s.max == 28.0);
    uint8_t top[3] = {0, 0, 0xFC}; /* value 3 = 0x3F: the most negative */
    s = stats_of(STC_F6_E3M2, top, 3, 1);
    CHECK(s.min == -28.0 && s.zeros == 3);
}

static void test_half_and_bfloat(void) {
    uint16_t h[6] = {0x3C00, 0x0001, 0x8000, 0x7C00, 0xFE00, 0xC000}; /* 1, 2^-24, -0, inf, nan, -2 */
    stc_stats s = stats_of(STC_F16, h, sizeof h, 1);
    CHECK(s.count == 6 && s.nan == 1 && s.inf == 1 && s.zeros == 1 && s.finite == 4);
    CHECK(s.min == -2.0 && isinf(s.max) && s.max > 0);
    CHECK(fabs(s.mean - (1.0 + ldexp(1.0, -24) - 2.0) / 4) < 1e-15);
    uint16_t bf[3] = {0x3F80, 0xFF80, 0x0001}; /* 1, -inf, a subnormal */
    s = stats_of(STC_BF16, bf, sizeof bf, 1);
    CHECK(s.inf == 1 && isinf(s.min) && s.min < 0 && s.max == 1.0);
    CHECK(s.mean == (1.0 + ldexp(1.0, -133)) / 2);
}

static void test_integers_bool_and_complex(void) {
    int8_t i8[4] = {-128, 0, 127, 1};
    stc_stats s = stats_of(STC_I8, i8, sizeof i8, 1);
    CHECK(s.min == -128.0 && s.max == 127.0 && s.zeros == 1 && s.nan == 0 && s.inf == 0);
    CHECK(s.mean == 0.0 && s.m2 == 128.0 * 128 + 127.0 * 127 + 1);
    uint64_t u64[2] = {UINT64_MAX, 0};
    s = stats_of(STC_U64, u64, sizeof u64, 1);
    CHECK(s.max == 18446744073709551616.0 && s.min == 0.0);
    uint8_t flags[4] = {0, 1, 2, 0}; /* any non-zero byte is true */
    s = stats_of(STC_BOOL, flags, sizeof flags, 1);
    CHECK(s.zeros == 2 && s.max == 1.0 && s.mean == 0.5);
    float c[6] = {3, 4, 0, 0, NAN, 1}; /* |3+4j| = 5, 0, NaN */
    s = stats_of(STC_C64, c, sizeof c, 1);
    CHECK(s.count == 3 && s.nan == 1 && s.zeros == 1 && s.max == 5.0 && s.min == 0.0);
}

/* MARK: - Counting rules */

static void test_special_values(void) {
    double v[7] = {NAN, INFINITY, -INFINITY, -0.0, 0.0, 4.9e-324, 2.0};
    stc_stats s = stats_of(STC_F64, v, sizeof v, 1);
    CHECK(s.count == 7 && s.nan == 1 && s.inf == 2 && s.zeros == 2 && s.finite == 4);
    CHECK(isinf(s.min) && s.min < 0 && isinf(s.max) && s.max > 0);
    CHECK(s.mean == (4.9e-324 + 2.0) / 4);
    double nans[3] = {NAN, NAN, NAN};
    s = stats_of(STC_F64, nans, sizeof nans, 1);
    CHECK(s.nan == 3 && s.finite == 0 && s.min == INFINITY && s.max == -INFINITY);
    CHECK(s.mean == 0.0 && s.m2 == 0.0);
    s = stats_of(STC_F32, NULL, 0, 0);
    CHECK(s.count == 0 && s.finite == 0 && s.min == INFINITY && s.max == -INFINITY);
}

/* MARK: - Chunks, threads, merging */

static void test_threads_do_not_change_the_result(void) {
    size_t n = 3 * STC_STATS_CHUNK_VALUES + 12345;
    float *v = malloc(n * sizeof *v);
    CHECK(v != NULL);
    if (!v) return;
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        v[i] = (float)(x >> 8) / 65536.0f - 128.0f + 1000.0f;
    }
    v[7] = NAN;
    v[n - 1] = -INFINITY;
    stc_stats one = stats_of(STC_F32, v, n * sizeof *v, 1);
    stc_stats two = stats_of(STC_F32, v, n * sizeof *v, 2);
    stc_stats many = stats_of(STC_F32, v, n * sizeof *v, 64); /* capped */
    stc_stats any = stats_of(STC_F32, v, n * sizeof *v, 0);
    CHECK(same_stats(&one, &two));
    CHECK(same_stats(&one, &many));
    CHECK(same_stats(&one, &any));
    CHECK(one.count == n && one.nan == 1 && one.inf == 1);
    /* two pieces merged agree with the whole, to rounding */
    size_t half = n / 2;
    stc_stats a = stats_of(STC_F32, v, half * sizeof *v, 1);
    stc_stats b = stats_of(STC_F32, v + half, (n - half) * sizeof *v, 1);
    stc_stats_merge(&a, &b);
    CHECK(a.count == one.count && a.finite == one.finite && a.min == one.min &&
          a.max == one.max);
    CHECK(fabs(a.mean - one.mean) <= 1e-12 * fabs(one.mean));
    CHECK(fabs(a.m2 - one.m2) <= 1e-10 * one.m2);
    /* a plain two-pass reference in long double */
    long double sum = 0, sq = 0;
    size_t finite = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) sum += v[i], finite++;
    long double mean = sum / (long double)finite;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) sq += ((long double)v[i] - mean) * ((long double)v[i] - mean);
    CHECK(finite == one.finite);
    CHECK(fabsl((long double)one.mean - mean) <= 1e-12L * fabsl(mean));
    CHECK(fabsl((long double)one.m2 - sq) <= 1e-9L * sq);
    /* histograms: every finite value lands in a bin, whatever the threads */
    uint64_t h1[16] = {0}, h2[16] = {0};
    stc_error err;
    CHECK_OK(stc_stats_histogram(STC_F32, v, n * sizeof *v, 872.0, one.max, 16, h1, 1, NULL, &err), &err);
    CHECK_OK(stc_stats_histogram(STC_F32, v, n * sizeof *v, 872.0, one.max, 16, h2, 2, NULL, &err),
             &err);
    uint64_t total = 0;
    for (int i = 0; i < 16; i++) total += h1[i];
    CHECK(total == one.finite);
    CHECK(memcmp(h1, h2, sizeof h1) == 0);
    free(v);
}

static void test_histogram_edges(void) {
    double v[6] = {0.0, 0.5, 1.0, 2.0, NAN, INFINITY};
    uint64_t h[2] = {10, 0}; /* counts are added to */
    stc_error err;
    CHECK_OK(stc_stats_histogram(STC_F64, v, sizeof v, 0.0, 1.0, 2, h, 1, NULL, &err), &err);
    CHECK(h[0] == 11 && h[1] == 2); /* 2.0, NaN and inf are not counted; 1.0 is the last bin */
    uint64_t one[1] = {0};
    CHECK_OK(stc_stats_histogram(STC_F64, v, sizeof v, 0.5, 0.5, 1, one, 1, NULL, &err), &err);
    CHECK(one[0] == 1);
}

/* MARK: - Bad arguments, failed allocations */

static void test_bad_arguments(void) {
    stc_error err;
    stc_stats s;
    uint8_t b[5] = {0};
    uint64_t count = 0, h[4] = {0};
    error_poison(&err);
    CHECK_STATUS(stc_stats_compute(STC_F32, b, 5, 1, NULL, &s, &err), STC_ERR_INVALID_ARGUMENT,
                 &err);
    CHECK_ERROR_FILLED(&err, STC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(stc_stats_compute(STC_F6_E2M3, b, 4, 1, NULL, &s, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_stats_compute(STC_DTYPE_COUNT, b, 4, 1, NULL, &s, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_stats_compute(STC_U8, NULL, 4, 1, NULL, &s, &err), STC_ERR_INVALID_ARGUMENT,
                 &err);
    CHECK_STATUS(stc_stats_histogram(STC_U8, b, 4, 1.0, 0.0, 4, h, 1, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_stats_histogram(STC_U8, b, 4, 0.0, INFINITY, 4, h, 1, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_STATUS(stc_stats_histogram(STC_U8, b, 4, 0.0, 1.0, 0, h, 1, NULL, &err),
                 STC_ERR_INVALID_ARGUMENT, &err);
    CHECK_OK(stc_stats_value_count(STC_F4, 3, &count, &err), &err);
    CHECK(count == 6);
    CHECK_OK(stc_stats_value_count(STC_F6_E3M2, 6, &count, &err), &err);
    CHECK(count == 8);
}

static void test_allocation_failures(void) {
    size_t n = 2 * STC_STATS_CHUNK_VALUES;
    uint8_t *v = calloc(n, 1);
    CHECK(v != NULL);
    if (!v) return;
    test_alloc a;
    stc_error err;
    stc_stats s;
    memset(&s, 0x5A, sizeof s);
    stc_stats before = s;
    test_alloc_init(&a, 1);
    CHECK_STATUS(stc_stats_compute(STC_U8, v, n, 2, &a.base, &s, &err), STC_ERR_NO_MEMORY, &err);
    CHECK(memcmp(&s, &before, sizeof s) == 0); /* output untouched */
    CHECK(a.live_blocks == 0);
    uint64_t h[4] = {0};
    test_alloc_init(&a, 1);
    CHECK_STATUS(stc_stats_histogram(STC_U8, v, n, 0.0, 1.0, 4, h, 2, &a.base, &err),
                 STC_ERR_NO_MEMORY, &err);
    CHECK(h[0] == 0 && a.live_blocks == 0);
    test_alloc_init(&a, 0);
    CHECK_OK(stc_stats_compute(STC_U8, v, n, 2, &a.base, &s, &err), &err);
    CHECK(s.zeros == n && a.live_blocks == 0 && a.calls == 1);
    free(v);
}

int main(void) {
    test_small_float_codes();
    test_half_and_bfloat();
    test_integers_bool_and_complex();
    test_special_values();
    test_threads_do_not_change_the_result();
    test_histogram_edges();
    test_bad_arguments();
    test_allocation_failures();
    printf("%s: stats: %lu checks, %lu failed\n", g_failures ? "FAIL" : "OK", g_checks,
           g_failures);
    return g_failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
