/*
 * stats.c - summary statistics and histograms of tensor values, in parallel.
 *
 * The values are decoded a block at a time into doubles, and every dtype then
 * shares one loop. Large inputs are cut into fixed chunks that a few threads
 * of this call take in turn; the per-chunk results are merged in chunk order,
 * so the answer never depends on how many threads ran.
 */
#include "internal.h"

#include <float.h>
#include <math.h> /* the classification macros only: the core links without libm */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* Values decoded at once: small enough for the stack and the L1 cache. */
#define BLOCK_VALUES 512

#define MAX_BINS 4096

/* MARK: - Decoding */

/* 2^e for -1022 <= e <= 1023 (a normal double), built from its bits. */
static double pow2(int e) {
    uint64_t bits = (uint64_t)(e + 1023) << 52;
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* The square root of a finite s >= 0 that is zero or normal: Newton's method
 * from a guess within 6%, which five steps take to the last bit or so.
 * (sqrt() would make every program built from the core link libm.) */
static double square_root(double s) {
    if (s == 0.0) return 0.0;
    uint64_t bits;
    memcpy(&bits, &s, sizeof bits);
    bits = (bits >> 1) + ((uint64_t)1023 << 51); /* halves the exponent */
    double y;
    memcpy(&y, &bits, sizeof y);
    for (int i = 0; i < 5; i++) y = 0.5 * (y + s / y);
    return y;
}

/* How the 8-bit (and smaller) float types mark their special values. */
typedef enum special_kind {
    SPECIAL_NONE,      /* every code is a finite number (F4, F6) */
    SPECIAL_IEEE,      /* exponent all ones: infinity or NaN (F8_E5M2) */
    SPECIAL_FN,        /* exponent and mantissa all ones: NaN, no infinity (F8_E4M3) */
    SPECIAL_FNUZ,      /* the negative-zero code is the NaN; no infinity, no -0 */
    SPECIAL_E8M0       /* an unsigned exponent only; all ones is NaN */
} special_kind;

/* The value of one code of a small float format with a sign bit, ebits
 * exponent bits (bias `bias`) and mbits mantissa bits. */
static double decode_minifloat(unsigned code, unsigned ebits, unsigned mbits, int bias,
                               special_kind kind) {
    if (kind == SPECIAL_E8M0) return code == 0xFFu ? NAN : pow2((int)code - 127);
    unsigned exp_mask = (1u << ebits) - 1u, man_mask = (1u << mbits) - 1u;
    unsigned sign = (code >> (ebits + mbits)) & 1u;
    unsigned exponent = (code >> mbits) & exp_mask, mantissa = code & man_mask;
    if (kind == SPECIAL_FNUZ && sign && exponent == 0 && mantissa == 0) return NAN;
    if (kind == SPECIAL_IEEE && exponent == exp_mask) return mantissa ? NAN : (sign ? -INFINITY : INFINITY);
    if (kind == SPECIAL_FN && exponent == exp_mask && mantissa == man_mask) return NAN;
    double value = exponent == 0
                       ? (double)mantissa * pow2(1 - bias - (int)mbits)
                       : (double)(mantissa | (1u << mbits)) * pow2((int)exponent - bias - (int)mbits);
    return sign ? -value : value;
}

/* What a call reads: the bytes, their dtype, and a table of values for the
 * types of at most 8 bits. */
typedef struct source {
    const uint8_t *data;
    stc_dtype dtype;
    uint64_t values;
    double table[256];
} source;

/* Fills the table for the types decoded through one; returns 0 for the rest. */
static int fill_table(source *src) {
    unsigned ebits, mbits, codes = 256;
    int bias;
    special_kind kind;
    switch (src->dtype) {
    case STC_F8_E5M2: ebits = 5, mbits = 2, bias = 15, kind = SPECIAL_IEEE; break;
    case STC_F8_E4M3: ebits = 4, mbits = 3, bias = 7, kind = SPECIAL_FN; break;
    case STC_F8_E4M3FNUZ: ebits = 4, mbits = 3, bias = 8, kind = SPECIAL_FNUZ; break;
    case STC_F8_E5M2FNUZ: ebits = 5, mbits = 2, bias = 16, kind = SPECIAL_FNUZ; break;
    case STC_F8_E8M0: ebits = 8, mbits = 0, bias = 127, kind = SPECIAL_E8M0; break;
    case STC_F4: ebits = 2, mbits = 1, bias = 1, kind = SPECIAL_NONE, codes = 16; break;
    case STC_F6_E2M3: ebits = 2, mbits = 3, bias = 1, kind = SPECIAL_NONE, codes = 64; break;
    case STC_F6_E3M2: ebits = 3, mbits = 2, bias = 3, kind = SPECIAL_NONE, codes = 64; break;
    default: return 0;
    }
    for (unsigned c = 0; c < codes; c++) src->table[c] = decode_minifloat(c, ebits, mbits, bias, kind);
    return 1;
}

static double half_to_double(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, rest = h & 0x7FFFu, bits;
    float f;
    if (rest >= 0x7C00u) {
        bits = sign | 0x7F800000u | ((rest & 0x3FFu) << 13); /* infinity or NaN */
    } else if (rest >= 0x0400u) {
        bits = sign | ((rest + 0x1C000u) << 13); /* rebias 15 -> 127 */
    } else {
        double sub = (double)rest * pow2(-24); /* subnormal (or zero) */
        return sign ? -sub : sub;
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Loads values [first, first + n) of the source into out. Values of the
 * multi-byte types are copied with memcpy: tensors need not be aligned. */
#define LOAD_LOOP(type, expr)                                   \
    do {                                                        \
        const uint8_t *p = src->data + first * sizeof(type);    \
        for (size_t i = 0; i < n; i++) {                        \
            type raw;                                           \
            memcpy(&raw, p + i * sizeof(type), sizeof raw);     \
            out[i] = (expr);                                    \
        }                                                       \
    } while (0)

static double complex_modulus(const uint8_t *p) {
    float parts[2];
    memcpy(parts, p, sizeof parts);
    double re = parts[0], im = parts[1];
    if (isnan(re) || isnan(im)) return NAN;
    if (isinf(re) || isinf(im)) return INFINITY;
    return square_root(re * re + im * im); /* float parts: no overflow, no subnormal */
}

static void load_values(const source *src, uint64_t first, size_t n, double *out) {
    switch (src->dtype) {
    case STC_F64: LOAD_LOOP(double, raw); break;
    case STC_F32: LOAD_LOOP(float, (double)raw); break;
    case STC_F16: LOAD_LOOP(uint16_t, half_to_double(raw)); break;
    case STC_BF16: {
        const uint8_t *p = src->data + first * 2;
        for (size_t i = 0; i < n; i++) {
            uint16_t raw;
            memcpy(&raw, p + i * 2, 2);
            uint32_t bits = (uint32_t)raw << 16;
            float f;
            memcpy(&f, &bits, sizeof f);
            out[i] = f;
        }
        break;
    }
    case STC_I64: LOAD_LOOP(int64_t, (double)raw); break;
    case STC_U64: LOAD_LOOP(uint64_t, (double)raw); break;
    case STC_I32: LOAD_LOOP(int32_t, (double)raw); break;
    case STC_U32: LOAD_LOOP(uint32_t, (double)raw); break;
    case STC_I16: LOAD_LOOP(int16_t, (double)raw); break;
    case STC_U16: LOAD_LOOP(uint16_t, (double)raw); break;
    case STC_I8: LOAD_LOOP(int8_t, (double)raw); break;
    case STC_U8: LOAD_LOOP(uint8_t, (double)raw); break;
    case STC_BOOL: LOAD_LOOP(uint8_t, raw ? 1.0 : 0.0); break;
    case STC_C64:
        for (size_t i = 0; i < n; i++) out[i] = complex_modulus(src->data + (first + i) * 8);
        break;
    case STC_F4:
    case STC_F6_E2M3:
    case STC_F6_E3M2:
        for (size_t i = 0; i < n; i++)
            out[i] = src->table[stc__packed_code(src->dtype, src->data, first + i)];
        break;
    default: /* the 8-bit float types */
        for (size_t i = 0; i < n; i++) out[i] = src->table[src->data[first + i]];
        break;
    }
}

/* MARK: - Statistics of values */

void stc_stats_init(stc_stats *stats) {
    memset(stats, 0, sizeof *stats);
    stats->min = INFINITY;
    stats->max = -INFINITY;
}

void stc_stats_merge(stc_stats *into, const stc_stats *other) {
    into->count += other->count;
    into->nan += other->nan;
    into->inf += other->inf;
    into->zeros += other->zeros;
    if (other->min < into->min) into->min = other->min;
    if (other->max > into->max) into->max = other->max;
    if (other->finite == 0) return;
    if (into->finite == 0) {
        into->mean = other->mean;
        into->m2 = other->m2;
    } else {
        double na = (double)into->finite, nb = (double)other->finite, n = na + nb;
        double delta = other->mean - into->mean;
        into->mean += delta * (nb / n);
        into->m2 += other->m2 + delta * delta * (na * (nb / n));
    }
    into->finite += other->finite;
}

/* The statistics of n decoded values, merged into *acc. Four running sums
 * keep the additions independent; the block's own mean and m2 come from a
 * second pass while the block is still in cache. */
static void add_block(const double *v, size_t n, stc_stats *acc) {
    uint64_t nan = 0, nonfinite = 0, zeros = 0;
    double lo = INFINITY, hi = -INFINITY;
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i < n; i++) {
        double x = v[i];
        int finite = fabs(x) <= DBL_MAX; /* false for NaN and both infinities */
        nan += x != x;
        nonfinite += !finite;
        zeros += x == 0.0;
        lo = x < lo ? x : lo; /* NaN compares false: skipped */
        hi = x > hi ? x : hi;
        s[i & 3] += finite ? x : 0.0;
    }
    stc_stats block;
    block.count = n;
    block.nan = nan;
    block.inf = nonfinite - nan;
    block.zeros = zeros;
    block.finite = n - nonfinite;
    block.min = lo;
    block.max = hi;
    block.mean = 0.0;
    block.m2 = 0.0;
    if (block.finite) {
        double mean = ((s[0] + s[1]) + (s[2] + s[3])) / (double)block.finite;
        double q[4] = {0, 0, 0, 0};
        if (nonfinite == 0) {
            for (i = 0; i < n; i++) {
                double d = v[i] - mean;
                q[i & 3] += d * d;
            }
        } else {
            for (i = 0; i < n; i++) {
                double d = fabs(v[i]) <= DBL_MAX ? v[i] - mean : 0.0;
                q[i & 3] += d * d;
            }
        }
        block.mean = mean;
        block.m2 = (q[0] + q[1]) + (q[2] + q[3]);
    }
    stc_stats_merge(acc, &block);
}

static void stats_of_range(const source *src, uint64_t first, uint64_t count, stc_stats *out) {
    double values[BLOCK_VALUES];
    stc_stats_init(out);
    while (count > 0) {
        size_t n = count < BLOCK_VALUES ? (size_t)count : BLOCK_VALUES;
        load_values(src, first, n, values);
        add_block(values, n, out);
        first += n;
        count -= n;
    }
}

static void histogram_of_range(const source *src, uint64_t first, uint64_t count, double lo,
                               double hi, size_t bins, uint64_t *counts) {
    double values[BLOCK_VALUES];
    double scale = hi > lo ? (double)bins / (hi - lo) : 0.0;
    while (count > 0) {
        size_t n = count < BLOCK_VALUES ? (size_t)count : BLOCK_VALUES;
        load_values(src, first, n, values);
        for (size_t i = 0; i < n; i++) {
            double x = values[i];
            if (!(x >= lo && x <= hi)) continue; /* NaN, infinities, outside */
            double at = (x - lo) * scale;
            size_t bin = at >= (double)bins ? bins - 1 : (size_t)at;
            counts[bin]++;
        }
        first += n;
        count -= n;
    }
}

/* MARK: - Chunks and threads */

typedef struct job {
    const source *src;
    uint64_t chunks;
    atomic_uint_least64_t next; /* the next chunk to take */
    /* statistics: one result per chunk */
    stc_stats *partial;
    /* histogram: one array of bins counts per thread */
    int histogram;
    double lo, hi;
    size_t bins;
    uint64_t *counts;
} job;

typedef struct worker {
    job *job;
    size_t index; /* which counts array is this thread's */
} worker;

static void run_chunk(job *j, uint64_t k, size_t thread) {
    uint64_t first = k * STC_STATS_CHUNK_VALUES;
    uint64_t left = j->src->values - first;
    uint64_t n = left < STC_STATS_CHUNK_VALUES ? left : STC_STATS_CHUNK_VALUES;
    if (j->histogram)
        histogram_of_range(j->src, first, n, j->lo, j->hi, j->bins, j->counts + thread * j->bins);
    else
        stats_of_range(j->src, first, n, &j->partial[k]);
}

static void *work(void *arg) {
    worker *w = arg;
    for (;;) {
        uint64_t k = atomic_fetch_add(&w->job->next, 1);
        if (k >= w->job->chunks) break;
        run_chunk(w->job, k, w->index);
    }
    return NULL;
}

static unsigned thread_count(unsigned asked, uint64_t chunks) {
    if (asked == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        asked = online > 0 ? (unsigned)(online < STC_STATS_MAX_THREADS ? online : STC_STATS_MAX_THREADS) : 1u;
    }
    if (asked > STC_STATS_MAX_THREADS) asked = STC_STATS_MAX_THREADS;
    if ((uint64_t)asked > chunks) asked = (unsigned)chunks;
    return asked ? asked : 1u;
}

/* Runs every chunk of j on up to `threads` threads, this one included. A
 * thread the system refuses to start leaves its share to the others. */
static void run_job(job *j, unsigned threads) {
    pthread_t ids[STC_STATS_MAX_THREADS];
    worker workers[STC_STATS_MAX_THREADS];
    unsigned started = 0;
    for (unsigned t = 1; t < threads; t++) {
        workers[started + 1] = (worker){j, started + 1};
        if (pthread_create(&ids[started], NULL, work, &workers[started + 1]) != 0) break;
        started++;
    }
    workers[0] = (worker){j, 0};
    work(&workers[0]);
    for (unsigned t = 0; t < started; t++) pthread_join(ids[t], NULL);
}

/* MARK: - Public entry points */

stc_status stc_stats_value_count(stc_dtype dtype, uint64_t nbytes, uint64_t *out,
                                 stc_error *error) {
    unsigned bits = stc_dtype_bits(dtype);
    if (bits == 0)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "unknown dtype", STC_NO_OFFSET, NULL, 0);
    if (bits == 4) {
        if (nbytes > UINT64_MAX / 2)
            return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "too many bytes", STC_NO_OFFSET, NULL, 0);
        *out = nbytes * 2;
        return STC_OK;
    }
    uint64_t group = bits == 6 ? 3 : bits / 8, per_group = bits == 6 ? 4 : 1;
    if (nbytes % group != 0)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "byte count is not a whole number of values of the dtype", STC_NO_OFFSET,
                         NULL, 0);
    *out = nbytes / group * per_group;
    return STC_OK;
}

static stc_status prepare(stc_dtype dtype, const void *data, size_t nbytes, source *src,
                          stc_error *error) {
    stc_status status = stc_stats_value_count(dtype, nbytes, &src->values, error);
    if (status != STC_OK) return status;
    if (!data && nbytes)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT, "no data", STC_NO_OFFSET, NULL, 0);
    src->data = data;
    src->dtype = dtype;
    fill_table(src);
    return STC_OK;
}

static uint64_t chunk_count(uint64_t values) {
    return values / STC_STATS_CHUNK_VALUES + (values % STC_STATS_CHUNK_VALUES != 0);
}

stc_status stc_stats_compute(stc_dtype dtype, const void *data, size_t nbytes,
                             unsigned threads, const stc_allocator *allocator,
                             stc_stats *out, stc_error *error) {
    source src;
    stc_status status = prepare(dtype, data, nbytes, &src, error);
    if (status != STC_OK) return status;
    uint64_t chunks = chunk_count(src.values);
    if (chunks <= 1) {
        stats_of_range(&src, 0, src.values, out);
        return STC_OK;
    }
    const stc_allocator *a = stc__allocator_or_default(allocator);
    job j = {.src = &src, .chunks = chunks};
    atomic_init(&j.next, 0);
    /* chunks <= nbytes, so the product cannot overflow a size_t */
    j.partial = stc__malloc(a, (size_t)chunks * sizeof *j.partial);
    if (!j.partial)
        return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory for the chunk results",
                         STC_NO_OFFSET, NULL, 0);
    run_job(&j, thread_count(threads, chunks));
    stc_stats total;
    stc_stats_init(&total);
    for (uint64_t k = 0; k < chunks; k++) stc_stats_merge(&total, &j.partial[k]);
    stc__free(a, j.partial);
    *out = total;
    return STC_OK;
}

stc_status stc_stats_histogram(stc_dtype dtype, const void *data, size_t nbytes,
                               double lo, double hi, size_t bins, uint64_t *counts,
                               unsigned threads, const stc_allocator *allocator,
                               stc_error *error) {
    if (!(fabs(lo) <= DBL_MAX && fabs(hi) <= DBL_MAX && lo <= hi) || bins < 1 ||
        bins > MAX_BINS || !counts)
        return stc__fail(error, STC_ERR_INVALID_ARGUMENT,
                         "a histogram needs finite lo <= hi and 1 to 4096 bins", STC_NO_OFFSET,
                         NULL, 0);
    source src;
    stc_status status = prepare(dtype, data, nbytes, &src, error);
    if (status != STC_OK) return status;
    uint64_t chunks = chunk_count(src.values);
    unsigned n_threads = thread_count(threads, chunks);
    if (n_threads <= 1) {
        histogram_of_range(&src, 0, src.values, lo, hi, bins, counts);
        return STC_OK;
    }
    const stc_allocator *a = stc__allocator_or_default(allocator);
    job j = {.src = &src, .chunks = chunks, .histogram = 1, .lo = lo, .hi = hi, .bins = bins};
    atomic_init(&j.next, 0);
    size_t cells = (size_t)n_threads * bins;
    j.counts = stc__malloc(a, cells * sizeof *j.counts);
    if (!j.counts)
        return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory for the histogram counts",
                         STC_NO_OFFSET, NULL, 0);
    memset(j.counts, 0, cells * sizeof *j.counts);
    run_job(&j, n_threads);
    for (size_t c = 0; c < cells; c++) counts[c % bins] += j.counts[c];
    stc__free(a, j.counts);
    return STC_OK;
}
