/*
 * dtype.c - the table of the format's dtypes.
 */
#include "internal.h"

#include <string.h>

static const struct {
    const char *name;
    unsigned bits;
} dtype_table[STC_DTYPE_COUNT] = {
    [STC_BOOL] = {"BOOL", 8},
    [STC_F4] = {"F4", 4},
    [STC_F6_E2M3] = {"F6_E2M3", 6},
    [STC_F6_E3M2] = {"F6_E3M2", 6},
    [STC_U8] = {"U8", 8},
    [STC_I8] = {"I8", 8},
    [STC_F8_E5M2] = {"F8_E5M2", 8},
    [STC_F8_E4M3] = {"F8_E4M3", 8},
    [STC_F8_E8M0] = {"F8_E8M0", 8},
    [STC_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [STC_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [STC_I16] = {"I16", 16},
    [STC_U16] = {"U16", 16},
    [STC_F16] = {"F16", 16},
    [STC_BF16] = {"BF16", 16},
    [STC_I32] = {"I32", 32},
    [STC_U32] = {"U32", 32},
    [STC_F32] = {"F32", 32},
    [STC_C64] = {"C64", 64},
    [STC_F64] = {"F64", 64},
    [STC_I64] = {"I64", 64},
    [STC_U64] = {"U64", 64},
};

const char *stc_dtype_name(stc_dtype dtype) {
    if ((unsigned)dtype >= STC_DTYPE_COUNT) return NULL;
    return dtype_table[dtype].name;
}

unsigned stc_dtype_bits(stc_dtype dtype) {
    if ((unsigned)dtype >= STC_DTYPE_COUNT) return 0;
    return dtype_table[dtype].bits;
}

int stc_dtype_from_name(const char *name, size_t len, stc_dtype *out) {
    if (len < 2 || len > 11) return 0; /* "F4" .. "F8_E4M3FNUZ" */
    for (unsigned i = 0; i < STC_DTYPE_COUNT; i++) {
        const char *candidate = dtype_table[i].name;
        if (candidate[0] == name[0] && strlen(candidate) == len &&
            memcmp(candidate, name, len) == 0) {
            *out = (stc_dtype)i;
            return 1;
        }
    }
    return 0;
}

bool stc__element_count(const uint64_t *shape, size_t ndim, uint64_t *out) {
    uint64_t count = 1;
    for (size_t i = 0; i < ndim; i++) {
        if (!stc__mul_u64(count, shape[i], &count)) return false;
    }
    *out = count;
    return true;
}

stc_status stc__tensor_nbytes(stc_dtype dtype, const uint64_t *shape, size_t ndim,
                              uint64_t *out) {
    uint64_t elements, bits;
    if (!stc__element_count(shape, ndim, &elements)) return STC_ERR_SIZE_OVERFLOW;
    if (!stc__mul_u64(elements, stc_dtype_bits(dtype), &bits)) return STC_ERR_SIZE_OVERFLOW;
    if (bits % 8 != 0) return STC_ERR_MISALIGNED;
    *out = bits / 8;
    return STC_OK;
}

unsigned stc__packed_code(stc_dtype dtype, const uint8_t *data, uint64_t index) {
    if (dtype == STC_F4) {
        unsigned byte = data[index / 2];
        return index % 2 ? byte >> 4 : byte & 0xFu;
    }
    const uint8_t *group = data + index / 4 * 3;
    uint32_t word = (uint32_t)group[0] | (uint32_t)group[1] << 8 | (uint32_t)group[2] << 16;
    return (word >> (6 * (index % 4))) & 0x3Fu;
}
