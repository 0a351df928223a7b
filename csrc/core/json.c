/*
 * json.c - a strict JSON lexer for safetensors headers (RFC 8259, as strict
 * parsers read it): no comments, no trailing commas, no NaN, no leading
 * zeros, no raw control characters, no lone surrogates.
 *
 * The lexer never recurses: skip_value keeps its own bounded stack, so a
 * header of a million '[' costs one error, not a stack overflow. The header
 * text has been checked as UTF-8 before any of this runs.
 */
#include "internal.h"

#include <string.h>

/* MARK: - Cursor */

uint64_t stc__json_offset(const stc__json *j) { return j->base_offset + j->pos; }

stc_status stc__json_syntax_error(stc__json *j, const char *message) {
    return stc__fail(j->error, STC_ERR_INVALID_JSON, message, stc__json_offset(j), NULL, 0);
}

int stc__json_peek(stc__json *j) {
    while (j->pos < j->len) {
        char c = j->text[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return (unsigned char)c;
        j->pos++;
    }
    return -1;
}

stc_status stc__json_expect(stc__json *j, char c, const char *message) {
    if (stc__json_peek(j) != (unsigned char)c) return stc__json_syntax_error(j, message);
    j->pos++;
    return STC_OK;
}

/* MARK: - Strings */

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits of a \u escape at text[pos]. */
static bool read_hex4(const stc__json *j, size_t pos, uint32_t *out) {
    if (j->len - pos < 4) return false;
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        int h = hex_value(j->text[pos + i]);
        if (h < 0) return false;
        v = (v << 4) | (uint32_t)h;
    }
    *out = v;
    return true;
}

static size_t encode_utf8(uint32_t cp, char *dst) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xC0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the escape after a backslash at text[pos] ('\\' already consumed
 * is at pos - 1) into dst. Advances *pos past it; returns the bytes written
 * or 0 on a malformed escape (with *pos at the offending byte). Every escape
 * is at least as long as its UTF-8 encoding (\uXXXX is 6 bytes for at most 3,
 * a surrogate pair 12 for 4), which is what makes in-place decoding safe. */
static size_t decode_escape(stc__json *j, size_t *pos, char *dst) {
    char c = j->text[*pos];
    static const char simple_from[] = "\"\\/bfnrt";
    static const char simple_to[] = "\"\\/\b\f\n\r\t";
    const char *hit = c ? strchr(simple_from, c) : NULL;
    if (hit) {
        *dst = simple_to[hit - simple_from];
        *pos += 1;
        return 1;
    }
    if (c != 'u') return 0;
    uint32_t cp;
    if (!read_hex4(j, *pos + 1, &cp)) return 0;
    size_t next = *pos + 5;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return 0; /* lone low surrogate */
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t low;
        if (j->len - next < 6 || j->text[next] != '\\' || j->text[next + 1] != 'u' ||
            !read_hex4(j, next + 2, &low) || low < 0xDC00 || low > 0xDFFF)
            return 0; /* lone high surrogate */
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        next += 6;
    }
    *pos = next;
    return encode_utf8(cp, dst);
}

stc_status stc__json_string(stc__json *j, stc__string *out) {
    size_t start = j->pos; /* at the opening quote */
    size_t pos = start + 1;
    char *const first = j->text + pos;
    /* Until the first escape the decoded bytes are the raw bytes, already in
     * place: just scan. Most names have no escapes at all. */
    while (pos < j->len) {
        unsigned char c = (unsigned char)j->text[pos];
        if (c == '"' || c == '\\' || c < 0x20) break;
        pos++;
    }
    char *dst = j->text + pos;
    for (;;) {
        if (pos >= j->len) {
            j->pos = start;
            return stc__json_syntax_error(j, "unterminated string");
        }
        unsigned char c = (unsigned char)j->text[pos];
        if (c == '"') break;
        if (c < 0x20) {
            j->pos = pos;
            return stc__json_syntax_error(j, "raw control character in string (escape it)");
        }
        if (c != '\\') {
            *dst++ = (char)c;
            pos++;
            continue;
        }
        pos++;
        size_t written = pos < j->len ? decode_escape(j, &pos, dst) : 0;
        if (written == 0) {
            j->pos = pos - 1;
            return stc__json_syntax_error(
                j, "invalid escape in string (bad \\u digits or a lone UTF-16 surrogate)");
        }
        dst += written;
    }
    /* dst <= text + pos, the closing quote: terminating there is in bounds. */
    *dst = '\0';
    out->ptr = first;
    out->len = (size_t)(dst - first);
    out->offset = j->base_offset + start;
    j->pos = pos + 1;
    return STC_OK;
}

/* MARK: - Numbers */

typedef struct number_token {
    size_t start, end;
    bool negative;
    bool integral; /* no fraction, no exponent */
} number_token;

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Scans a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static stc_status scan_number(stc__json *j, number_token *tok) {
    size_t p = j->pos;
    tok->start = p;
    tok->negative = false;
    tok->integral = true;
    if (p < j->len && j->text[p] == '-') {
        tok->negative = true;
        p++;
    }
    if (p >= j->len || !is_digit(j->text[p])) {
        j->pos = p;
        return stc__json_syntax_error(j, "invalid number");
    }
    if (j->text[p] == '0') {
        p++;
        if (p < j->len && is_digit(j->text[p])) {
            j->pos = p;
            return stc__json_syntax_error(j, "number with a leading zero");
        }
    } else {
        while (p < j->len && is_digit(j->text[p])) p++;
    }
    if (p < j->len && j->text[p] == '.') {
        tok->integral = false;
        p++;
        if (p >= j->len || !is_digit(j->text[p])) {
            j->pos = p;
            return stc__json_syntax_error(j, "invalid number: digits expected after '.'");
        }
        while (p < j->len && is_digit(j->text[p])) p++;
    }
    if (p < j->len && (j->text[p] == 'e' || j->text[p] == 'E')) {
        tok->integral = false;
        p++;
        if (p < j->len && (j->text[p] == '+' || j->text[p] == '-')) p++;
        if (p >= j->len || !is_digit(j->text[p])) {
            j->pos = p;
            return stc__json_syntax_error(j, "invalid number: digits expected in exponent");
        }
        while (p < j->len && is_digit(j->text[p])) p++;
    }
    tok->end = p;
    j->pos = p;
    return STC_OK;
}

stc_status stc__json_u64(stc__json *j, uint64_t *out, unsigned depth, const char *tensor,
                         size_t tensor_len) {
    number_token tok;
    stc_status st;
    int c = stc__json_peek(j);
    if (c != '-' && !(c >= '0' && c <= '9')) {
        /* Not a number: a syntax error if it is not JSON at all, else a
         * value of the wrong type. */
        uint64_t at = stc__json_offset(j);
        if ((st = stc__json_skip_value(j, depth)) != STC_OK) return st;
        return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                         "shape and data_offsets must hold integers", at, tensor, tensor_len);
    }
    st = scan_number(j, &tok);
    if (st != STC_OK) return st;
    uint64_t at = j->base_offset + tok.start;
    if (tok.negative)
        return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                         "negative number in shape or data_offsets", at, tensor, tensor_len);
    if (!tok.integral)
        return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                         "shape and data_offsets must be integers, not fractions or "
                         "exponents",
                         at, tensor, tensor_len);
    uint64_t v = 0;
    for (size_t p = tok.start; p < tok.end; p++) {
        if (!stc__mul_u64(v, 10, &v) || !stc__add_u64(v, (uint64_t)(j->text[p] - '0'), &v))
            return stc__fail(j->error, STC_ERR_INVALID_HEADER,
                             "number in shape or data_offsets does not fit 64 bits", at,
                             tensor, tensor_len);
    }
    *out = v;
    return STC_OK;
}

/* MARK: - Duplicate keys */

stc_status stc__json_push_key(stc__json *j, const stc__string *key) {
    if (!stc__grow(j->a, (void **)&j->keys, &j->keys_capacity, j->keys_len + 1,
                   sizeof *j->keys))
        return stc__fail(j->error, STC_ERR_NO_MEMORY, "out of memory while parsing the header",
                         STC_NO_OFFSET, NULL, 0);
    j->keys[j->keys_len++] = *key;
    return STC_OK;
}

static bool key_less(const void *ctx, uint32_t a, uint32_t b) {
    const stc__string *keys = ctx;
    int c = stc__compare_bytes(keys[a].ptr, keys[a].len, keys[b].ptr, keys[b].len);
    /* Ties by position, so that the reported duplicate is the later one. */
    return c < 0 || (c == 0 && keys[a].offset < keys[b].offset);
}

static stc_status duplicate_key(stc__json *j, const stc__string *key) {
    return stc__fail_key(j->error, STC_ERR_DUPLICATE_KEY,
                         "the same key appears twice in one JSON object", key->offset, key->ptr,
                         key->len);
}

stc_status stc__json_check_keys(stc__json *j, size_t start) {
    size_t n = j->keys_len - start;
    if (n < 2) {
        j->keys_len = start;
        return STC_OK;
    }
    const stc__string *keys = j->keys + start;
    stc_status st = STC_OK;
    if (n <= 8) {
        for (size_t a = 1; a < n && st == STC_OK; a++)
            for (size_t b = 0; b < a; b++)
                if (stc__compare_bytes(keys[a].ptr, keys[a].len, keys[b].ptr, keys[b].len) == 0) {
                    st = duplicate_key(j, &keys[a]);
                    break;
                }
    } else if (n > UINT32_MAX) {
        st = stc__fail(j->error, STC_ERR_INVALID_HEADER, "too many keys in one object",
                       keys[0].offset, NULL, 0);
    } else {
        uint32_t *idx = stc__malloc(j->a, 2 * n * sizeof *idx);
        if (!idx)
            return stc__fail(j->error, STC_ERR_NO_MEMORY,
                             "out of memory while parsing the header", STC_NO_OFFSET, NULL, 0);
        for (size_t i = 0; i < n; i++) idx[i] = (uint32_t)i;
        stc__sort_indices(idx, idx + n, n, key_less, keys);
        for (size_t i = 1; i < n; i++) {
            const stc__string *prev = &keys[idx[i - 1]], *cur = &keys[idx[i]];
            if (stc__compare_bytes(prev->ptr, prev->len, cur->ptr, cur->len) == 0) {
                st = duplicate_key(j, cur);
                break;
            }
        }
        stc__free(j->a, idx);
    }
    j->keys_len = start;
    return st;
}

void stc__json_release(stc__json *j) {
    stc__free(j->a, j->keys);
    j->keys = NULL;
    j->keys_len = j->keys_capacity = 0;
}

/* MARK: - Skipping values */

static stc_status expect_literal(stc__json *j, const char *word) {
    size_t n = strlen(word);
    if (j->len - j->pos < n || memcmp(j->text + j->pos, word, n) != 0)
        return stc__json_syntax_error(j, "unexpected character: a JSON value was expected");
    j->pos += n;
    return STC_OK;
}

/* One open container of skip_value's stack. */
typedef struct open_container {
    bool is_object;
    size_t keys_start;
} open_container;

stc_status stc__json_skip_value(stc__json *j, unsigned depth) {
    open_container stack[STC_MAX_NESTING_DEPTH];
    size_t top = 0; /* number of open containers */
    stc_status st;
    for (;;) {
        /* Parse one value. */
        int c = stc__json_peek(j);
        if (c == '{' || c == '[') {
            if (depth + top + 1 > STC_MAX_NESTING_DEPTH)
                return stc__fail(j->error, STC_ERR_NESTING_TOO_DEEP,
                                 "arrays and objects nest too deeply", stc__json_offset(j),
                                 NULL, 0);
            j->pos++;
            stack[top].is_object = (c == '{');
            stack[top].keys_start = j->keys_len;
            top++;
            int next = stc__json_peek(j);
            if (next == (c == '{' ? '}' : ']')) {
                j->pos++;
                top--;
            } else if (c == '{') {
                goto object_key;
            } else {
                continue; /* first array element */
            }
        } else if (c == '"') {
            stc__string s;
            if ((st = stc__json_string(j, &s)) != STC_OK) return st;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            number_token tok;
            if ((st = scan_number(j, &tok)) != STC_OK) return st;
        } else if (c == 't') {
            if ((st = expect_literal(j, "true")) != STC_OK) return st;
        } else if (c == 'f') {
            if ((st = expect_literal(j, "false")) != STC_OK) return st;
        } else if (c == 'n') {
            if ((st = expect_literal(j, "null")) != STC_OK) return st;
        } else if (c < 0) {
            return stc__json_syntax_error(j, "unexpected end of header: a value was expected");
        } else {
            return stc__json_syntax_error(j, "unexpected character: a JSON value was expected");
        }

        /* After a value: close containers or move to the next member. */
        for (;;) {
            if (top == 0) return STC_OK;
            open_container *open = &stack[top - 1];
            int sep = stc__json_peek(j);
            char closer = open->is_object ? '}' : ']';
            if (sep == ',') {
                j->pos++;
                if (open->is_object) goto object_key;
                break; /* next array element */
            }
            if (sep != closer)
                return stc__json_syntax_error(j, open->is_object ? "expected ',' or '}'"
                                                                 : "expected ',' or ']'");
            j->pos++;
            if (open->is_object && (st = stc__json_check_keys(j, open->keys_start)) != STC_OK)
                return st;
            top--;
        }
        continue;

    object_key:
        if (stc__json_peek(j) != '"')
            return stc__json_syntax_error(j, "expected a string key");
        {
            stc__string key;
            if ((st = stc__json_string(j, &key)) != STC_OK) return st;
            if ((st = stc__json_push_key(j, &key)) != STC_OK) return st;
        }
        if ((st = stc__json_expect(j, ':', "expected ':' after the key")) != STC_OK) return st;
    }
}

/* MARK: - Whole-text syntax check */

stc_status stc__json_check_syntax(char *text, size_t len, uint64_t base_offset,
                                  const stc_allocator *a, stc_error *error) {
    stc__json j = {.text = text, .len = len, .base_offset = base_offset, .a = a, .error = error};
    stc_status st = stc__json_skip_value(&j, 0);
    if (st == STC_OK && stc__json_peek(&j) >= 0)
        st = stc__json_syntax_error(&j, "unexpected data after the header's JSON object");
    stc__json_release(&j);
    return st;
}
