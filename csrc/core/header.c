/*
 * header.c - the header schema: turns the JSON text into a table of tensor
 * descriptors and metadata pairs.
 *
 * Depths, for the nesting limit: the top-level object is 1, a tensor entry
 * or __metadata__ is 2, a shape array is 3.
 */
#include "internal.h"

#include <string.h>

#define METADATA_KEY "__metadata__"

static bool string_equals(const stc__string *s, const char *literal, size_t n) {
    return s->len == n && memcmp(s->ptr, literal, n) == 0;
}

/* Compares with a string literal; its length is known at compile time. */
#define string_is(s, literal) string_equals((s), (literal), sizeof(literal) - 1)

static stc_status out_of_memory(stc_error *error) {
    return stc__fail(error, STC_ERR_NO_MEMORY, "out of memory while parsing the header",
                     STC_NO_OFFSET, NULL, 0);
}

/* Moves past ',' (returns true: another member follows) or the closer. */
static stc_status next_member(stc__json *j, char closer, bool *more) {
    int c = stc__json_peek(j);
    if (c == ',') {
        j->pos++;
        *more = true;
        return STC_OK;
    }
    if (c == (unsigned char)closer) {
        j->pos++;
        *more = false;
        return STC_OK;
    }
    return stc__json_syntax_error(j, closer == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
}

/* Reads `"key":` with the cursor before the key. */
static stc_status read_key(stc__json *j, stc__string *key) {
    if (stc__json_peek(j) != '"') return stc__json_syntax_error(j, "expected a string key");
    stc_status st = stc__json_string(j, key);
    if (st != STC_OK) return st;
    return stc__json_expect(j, ':', "expected ':' after the key");
}

/* MARK: - __metadata__ */

static stc_status parse_metadata(stc__json *j, stc__header *h) {
    stc_status st;
    int c = stc__json_peek(j);
    if (c == 'n') {
        if (j->len - j->pos >= 4 && memcmp(j->text + j->pos, "null", 4) == 0) {
            j->pos += 4;
            return STC_OK;
        }
        return stc__json_syntax_error(j, "unexpected character: a JSON value was expected");
    }
    if (c != '{') {
        uint64_t at = stc__json_offset(j);
        if ((st = stc__json_skip_value(j, 1)) != STC_OK) return st;
        return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                         "__metadata__ must be an object of strings, or null", at, NULL, 0);
    }
    j->pos++;
    h->has_metadata = true;
    size_t keys_start = j->keys_len;
    if (stc__json_peek(j) == '}') {
        j->pos++;
        return STC_OK;
    }
    bool more = true;
    while (more) {
        stc__string key, value;
        if ((st = read_key(j, &key)) != STC_OK) return st;
        if ((st = stc__json_push_key(j, &key)) != STC_OK) return st;
        if (stc__json_peek(j) != '"') {
            uint64_t at = stc__json_offset(j);
            if ((st = stc__json_skip_value(j, 2)) != STC_OK) return st;
            return stc__fail_key(j->error, STC_ERR_INVALID_HEADER,
                                 "__metadata__ values must be strings", at, key.ptr, key.len);
        }
        if ((st = stc__json_string(j, &value)) != STC_OK) return st;
        if (!stc__grow(j->a, (void **)&h->metadata, &h->metadata_capacity,
                       h->metadata_count + 1, sizeof *h->metadata))
            return out_of_memory(j->error);
        h->metadata[h->metadata_count++] =
            (stc_string_pair){key.ptr, key.len, value.ptr, value.len};
        if ((st = next_member(j, '}', &more)) != STC_OK) return st;
    }
    return stc__json_check_keys(j, keys_start);
}

/* MARK: - Tensor entries */

/* Parses `[n, n, ...]` of non-negative integers into the dims pool. */
static stc_status parse_u64_array(stc__json *j, stc__header *h, const stc__string *name,
                                  const char *what, size_t *count) {
    stc_status st;
    if (stc__json_peek(j) != '[') {
        uint64_t at = stc__json_offset(j);
        if ((st = stc__json_skip_value(j, 2)) != STC_OK) return st;
        return stc__fail(j->error, STC_ERR_INVALID_HEADER, what, at, name->ptr, name->len);
    }
    j->pos++;
    *count = 0;
    if (stc__json_peek(j) == ']') {
        j->pos++;
        return STC_OK;
    }
    bool more = true;
    while (more) {
        uint64_t v;
        if ((st = stc__json_u64(j, &v, 3, name->ptr, name->len)) != STC_OK) return st;
        if (!stc__grow(j->a, (void **)&h->dims, &h->dims_capacity, h->dims_len + 1,
                       sizeof *h->dims))
            return out_of_memory(j->error);
        h->dims[h->dims_len++] = v;
        (*count)++;
        if ((st = next_member(j, ']', &more)) != STC_OK) return st;
    }
    return STC_OK;
}

static stc_status missing_field(stc__json *j, const stc__string *name, const char *message) {
    return stc__fail(j->error, STC_ERR_INVALID_HEADER, message, name->offset, name->ptr,
                     name->len);
}

static stc_status parse_tensor(stc__json *j, stc__header *h, const stc__string *name) {
    stc_status st;
    if (stc__json_peek(j) != '{') {
        uint64_t at = stc__json_offset(j);
        if ((st = stc__json_skip_value(j, 1)) != STC_OK) return st;
        return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                         "a tensor entry must be an object with dtype, shape and data_offsets",
                         at, name->ptr, name->len);
    }
    j->pos++;
    if (!stc__grow(j->a, (void **)&h->tensors, &h->tensor_capacity, h->count + 1,
                   sizeof *h->tensors))
        return out_of_memory(j->error);
    stc_tensor *t = &h->tensors[h->count];
    memset(t, 0, sizeof *t);
    t->name = name->ptr;
    t->name_len = name->len;
    t->header_offset = name->offset;
    bool have_dtype = false, have_shape = false, have_offsets = false;
    size_t keys_start = j->keys_len;

    bool more = stc__json_peek(j) != '}';
    if (!more) j->pos++;
    while (more) {
        stc__string key;
        if ((st = read_key(j, &key)) != STC_OK) return st;
        bool *seen = string_is(&key, "dtype")          ? &have_dtype
                     : string_is(&key, "shape")        ? &have_shape
                     : string_is(&key, "data_offsets") ? &have_offsets
                                                       : NULL;
        if (seen && *seen)
            return stc__fail(j->error, STC_ERR_DUPLICATE_KEY,
                             "a field appears twice in a tensor entry", key.offset, name->ptr,
                             name->len);
        if (seen == &have_dtype) {
            stc__string code;
            uint64_t at = stc__json_offset(j);
            if (stc__json_peek(j) != '"') {
                if ((st = stc__json_skip_value(j, 2)) != STC_OK) return st;
                return stc__fail(j->error, STC_ERR_INVALID_HEADER, "dtype must be a string", at,
                                 name->ptr, name->len);
            }
            if ((st = stc__json_string(j, &code)) != STC_OK) return st;
            if (!stc_dtype_from_name(code.ptr, code.len, &t->dtype))
                return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                                 "unknown dtype (codes are case-sensitive, e.g. \"F32\")", at,
                                 name->ptr, name->len);
        } else if (seen == &have_shape) {
            if ((st = parse_u64_array(j, h, name, "shape must be an array of integers",
                                      &t->ndim)) != STC_OK)
                return st;
        } else if (seen == &have_offsets) {
            size_t before = h->dims_len, n = 0;
            if ((st = parse_u64_array(j, h, name,
                                      "data_offsets must be an array of two integers",
                                      &n)) != STC_OK)
                return st;
            if (n != 2)
                return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                                 "data_offsets must hold exactly two integers [begin, end]",
                                 key.offset, name->ptr, name->len);
            t->begin = h->dims[before];
            t->end = h->dims[before + 1];
            /* Offsets leave the pool at once, so each tensor's dims stay
             * contiguous and in tensor order, whatever the field order. */
            h->dims_len = before;
        } else {
            /* Unknown fields are ignored, but must be valid and unique. */
            if ((st = stc__json_push_key(j, &key)) != STC_OK) return st;
            if ((st = stc__json_skip_value(j, 2)) != STC_OK) return st;
        }
        if (seen) *seen = true;
        if ((st = next_member(j, '}', &more)) != STC_OK) return st;
    }
    if ((st = stc__json_check_keys(j, keys_start)) != STC_OK) return st;
    if (!have_dtype) return missing_field(j, name, "tensor entry has no \"dtype\"");
    if (!have_shape) return missing_field(j, name, "tensor entry has no \"shape\"");
    if (!have_offsets) return missing_field(j, name, "tensor entry has no \"data_offsets\"");
    h->count++;
    return STC_OK;
}

/* MARK: - The header object */

static stc_status parse_object(stc__json *j, stc__header *h) {
    stc_status st;
    int c = stc__json_peek(j);
    if (c < 0) return stc__json_syntax_error(j, "the header is empty: a JSON object was expected");
    if (c != '{') {
        uint64_t at = stc__json_offset(j);
        if ((st = stc__json_skip_value(j, 0)) != STC_OK) return st;
        return stc__fail(j->error, STC_ERR_INVALID_HEADER, "the header must be a JSON object",
                         at, NULL, 0);
    }
    j->pos++;
    bool seen_metadata = false;
    bool more = stc__json_peek(j) != '}';
    if (!more) j->pos++;
    while (more) {
        stc__string key;
        if ((st = read_key(j, &key)) != STC_OK) return st;
        if (string_is(&key, METADATA_KEY)) {
            if (seen_metadata)
                return stc__fail(j->error, STC_ERR_DUPLICATE_KEY,
                                 "__metadata__ appears twice", key.offset, NULL, 0);
            seen_metadata = true;
            st = parse_metadata(j, h);
        } else {
            st = parse_tensor(j, h, &key);
        }
        if (st != STC_OK) return st;
        if ((st = next_member(j, '}', &more)) != STC_OK) return st;
    }
    if (stc__json_peek(j) >= 0)
        return stc__json_syntax_error(j, "unexpected data after the header's JSON object");
    return STC_OK;
}

stc_status stc__parse_header(char *text, size_t len, uint64_t base_offset,
                             const stc_allocator *a, stc__header *out, stc_error *error) {
    memset(out, 0, sizeof *out);
    size_t valid = stc__utf8_valid_prefix((const uint8_t *)text, len);
    if (valid != len)
        return stc__fail(error, STC_ERR_INVALID_UTF8, "the header is not valid UTF-8",
                         base_offset + valid, NULL, 0);
    stc__json j = {.text = text, .len = len, .base_offset = base_offset, .a = a, .error = error};
    stc_status st = parse_object(&j, out);
    stc__json_release(&j);
    if (st != STC_OK) {
        stc__header_free(a, out);
        return st;
    }
    /* The dims pool may have moved while growing: point shapes into it now. */
    size_t next = 0;
    for (size_t i = 0; i < out->count; i++) {
        out->tensors[i].shape = out->tensors[i].ndim ? out->dims + next : NULL;
        next += out->tensors[i].ndim;
    }
    return STC_OK;
}

void stc__header_free(const stc_allocator *a, stc__header *header) {
    stc__free(a, header->tensors);
    stc__free(a, header->dims);
    stc__free(a, header->metadata);
    memset(header, 0, sizeof *header);
}
