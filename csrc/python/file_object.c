/*
 * file_object.c - _File, the owner of one opened file.
 *
 * It holds the core's stc_file (descriptor, mapping, parsed header) and is
 * the base object of every array it hands out. Opening creates no Python
 * object per tensor: names, arrays and metadata are built when asked for.
 */
#include "binding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static module_state *state_of_self(PyObject *self) { return stcpy_state_of_type(Py_TYPE(self)); }

/* MARK: - Opening */

static PyObject *new_file_object(module_state *st) {
    file_object *f = PyObject_New(file_object, st->file_type);
    if (!f) return NULL;
    f->file = NULL;
    f->has_image = 0;
    f->filename = NULL;
    f->handed_out = NULL;
    return (PyObject *)f;
}

static int parse_backend(PyObject *backend, stc_backend *out) {
    if (!backend) {
        *out = STC_BACKEND_MMAP;
        return 0;
    }
    if (PyUnicode_Check(backend) && PyUnicode_CompareWithASCIIString(backend, "mmap") == 0) {
        *out = STC_BACKEND_MMAP;
        return 0;
    }
    if (PyUnicode_Check(backend) && PyUnicode_CompareWithASCIIString(backend, "pread") == 0) {
        *out = STC_BACKEND_PREAD;
        return 0;
    }
    if (PyUnicode_Check(backend) && PyUnicode_CompareWithASCIIString(backend, "auto") == 0) {
        *out = STC_BACKEND_AUTO;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "backend must be \"mmap\", \"pread\" or \"auto\", not %R",
                 backend);
    return -1;
}

/* The last step of every opening: the owner takes the core's file, or the
 * core's error is raised and the half-made owner released. */
static PyObject *finish_open(module_state *st, file_object *f, stc_status status,
                             stc_file *file, const stc_error *error, PyObject *filename) {
    if (status != STC_OK) {
        stcpy_raise_core_error(st, error, filename);
        Py_DECREF(f);
        return NULL;
    }
    f->file = file;
    /* Only a writable mapping of a file can hand a caller's writes back. */
    if (stc_is_mapped(file) && stc_data_writable(file)) {
        f->handed_out = PyMem_Calloc(stc_tensor_count(file) / 8 + 1, 1);
        if (!f->handed_out) {
            Py_DECREF(f);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)f;
}

/* MARK: - Tensors handed out */

int stcpy_was_handed_out(const file_object *f, const stc_tensor *t) {
    if (!f->handed_out) return 0;
    size_t i = stc_tensor_index(f->file, t);
    return (f->handed_out[i / 8] >> (i % 8)) & 1;
}

int stcpy_hand_out(file_object *f, const stc_tensor *t) {
    if (!f->handed_out) return 1;
    size_t i = stc_tensor_index(f->file, t);
    unsigned char bit = (unsigned char)(1u << (i % 8));
    if (f->handed_out[i / 8] & bit) return 0;
    f->handed_out[i / 8] |= bit;
    return 1;
}

PyObject *stcpy_open_path(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"filename", "backend", "max_header_size", NULL};
    module_state *st = stcpy_state_of_module(module);
    PyObject *path_bytes = NULL, *backend = NULL;
    unsigned long long max_header = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|OK:open", keywords, PyUnicode_FSConverter,
                                     &path_bytes, &backend, &max_header))
        return NULL;
    stc_open_options options = {.max_header_size = max_header};
    if (parse_backend(backend, &options.backend) < 0) {
        Py_DECREF(path_bytes);
        return NULL;
    }
    file_object *f = (file_object *)new_file_object(st);
    if (!f) {
        Py_DECREF(path_bytes);
        return NULL;
    }
    f->filename = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_bytes));
    if (!f->filename) {
        Py_DECREF(path_bytes);
        Py_DECREF(f);
        return NULL;
    }
    stc_error error;
    stc_status status;
    stc_file *file = NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    /* Without the GIL: open, read and validate touch only C memory and the
     * path bytes, which path_bytes keeps alive. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_open(path, &options, &file, &error);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    return finish_open(st, f, status, file, &error, f->filename);
}

PyObject *stcpy_open_buffer(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"data", "max_header_size", NULL};
    module_state *st = stcpy_state_of_module(module);
    PyObject *data;
    unsigned long long max_header = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|K:open_buffer", keywords, &data,
                                     &max_header))
        return NULL;
    file_object *f = (file_object *)new_file_object(st);
    if (!f) return NULL;
    /* Ask for a writable buffer first: arrays over it are then writable. */
    int writable = 1;
    if (PyObject_GetBuffer(data, &f->image, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        writable = 0;
        if (PyObject_GetBuffer(data, &f->image, PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(f);
            return NULL;
        }
    }
    f->has_image = 1;
    stc_open_options options = {.max_header_size = max_header, .writable_image = writable};
    stc_error error;
    stc_status status;
    stc_file *file = NULL;
    /* Without the GIL: the buffer export keeps the bytes alive and fixed. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_open_memory(f->image.buf, (size_t)f->image.len, &options, &file, &error);
    Py_END_ALLOW_THREADS
    return finish_open(st, f, status, file, &error, NULL);
}

PyObject *stcpy_open_fd(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "backend", "max_header_size", "name", NULL};
    module_state *st = stcpy_state_of_module(module);
    int fd;
    PyObject *backend = NULL, *name = Py_None;
    unsigned long long max_header = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|OKO:open_fd", keywords, &fd, &backend,
                                     &max_header, &name))
        return NULL;
    if (name != Py_None && !PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str or None");
        return NULL;
    }
    stc_open_options options = {.max_header_size = max_header};
    if (parse_backend(backend, &options.backend) < 0) return NULL;
    file_object *f = (file_object *)new_file_object(st);
    if (!f) return NULL;
    f->filename = name == Py_None ? NULL : Py_NewRef(name);
    stc_error error;
    stc_status status;
    stc_file *file = NULL;
    /* Without the GIL: the core duplicates fd and touches only C memory. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_open_fd(fd, &options, &file, &error);
    Py_END_ALLOW_THREADS
    return finish_open(st, f, status, file, &error, f->filename);
}

PyObject *stcpy_header_length(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"head", "file_size", "max_header_size", "name", NULL};
    module_state *st = stcpy_state_of_module(module);
    Py_buffer head;
    unsigned long long file_size, max_header = 0;
    PyObject *name = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*K|KO:header_length", keywords, &head,
                                     &file_size, &max_header, &name))
        return NULL;
    stc_open_options options = {.max_header_size = max_header};
    stc_error error;
    uint64_t n = 0;
    stc_status status = stc_header_length(head.buf, (size_t)head.len, file_size, &options, &n,
                                          &error);
    PyBuffer_Release(&head);
    if (status != STC_OK)
        return stcpy_raise_core_error(st, &error, name == Py_None ? NULL : name);
    return PyLong_FromUnsignedLongLong(n);
}

PyObject *stcpy_open_header(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"head", "file_size", "max_header_size", "name", NULL};
    module_state *st = stcpy_state_of_module(module);
    Py_buffer head;
    unsigned long long file_size, max_header = 0;
    PyObject *name = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*K|KO:open_header", keywords, &head,
                                     &file_size, &max_header, &name))
        return NULL;
    if (name != Py_None && !PyUnicode_Check(name)) {
        PyBuffer_Release(&head);
        PyErr_SetString(PyExc_TypeError, "name must be a str or None");
        return NULL;
    }
    file_object *f = (file_object *)new_file_object(st);
    if (!f) {
        PyBuffer_Release(&head);
        return NULL;
    }
    f->filename = name == Py_None ? NULL : Py_NewRef(name);
    stc_open_options options = {.max_header_size = max_header};
    stc_error error;
    stc_status status;
    stc_file *file = NULL;
    /* Without the GIL: the buffer export keeps the bytes alive; the core copies them. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_open_header(head.buf, (size_t)head.len, file_size, &options, &file, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&head);
    return finish_open(st, f, status, file, &error, f->filename);
}

/* MARK: - Close names (the "did you mean" of a missing tensor) */

/* Up to CLOSE_MAX names at the smallest edit distance from a query. Built
 * only on the error path; every candidate costs at most one banded pass. */
#define CLOSE_MAX 3

typedef struct {
    size_t distance; /* the best so far, or the limit while none was found */
    size_t count;
    size_t index[CLOSE_MAX];
    size_t *rows;    /* two rows of the distance table */
    size_t rows_len; /* the longest candidate they fit, plus one */
} close_set;

static void close_init(close_set *set, size_t query_len) {
    size_t limit = query_len / 4 + 1; /* a typo or two in a short name, more in a long one */
    set->distance = limit > 8 ? 8 : limit;
    set->count = 0;
    set->rows = NULL;
    set->rows_len = 0;
}

/* The Levenshtein distance of a and b (bytes) if it is at most `limit`, else
 * limit + 1. Only the band |i - j| <= limit is filled in, and a row whose
 * every cell exceeds the limit ends the search. */
static size_t bounded_distance(const char *a, size_t n, const char *b, size_t m, size_t limit,
                               size_t *prev, size_t *cur) {
    size_t inf = limit + 1;
    if ((n > m ? n - m : m - n) > limit) return inf;
    for (size_t j = 0; j <= m; j++) prev[j] = j <= limit ? j : inf;
    for (size_t i = 1; i <= n; i++) {
        size_t lo = i > limit ? i - limit : 1;
        size_t hi = i + limit < m ? i + limit : m;
        cur[lo - 1] = lo == 1 && i <= limit ? i : inf;
        size_t best = cur[lo - 1];
        for (size_t j = lo; j <= hi; j++) {
            size_t v = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < v) v = prev[j] + 1;
            if (cur[j - 1] + 1 < v) v = cur[j - 1] + 1;
            cur[j] = v < inf ? v : inf;
            if (cur[j] < best) best = cur[j];
        }
        if (hi < m) cur[hi + 1] = inf;
        if (best > limit) return inf;
        size_t *swap = prev;
        prev = cur;
        cur = swap;
    }
    return prev[m];
}

/* Weighs candidate `index`; 0, or -1 with MemoryError. Candidates come in a
 * stable order, so of equally close names the first ones are kept. */
static int close_consider(close_set *set, const char *query, size_t query_len,
                          const char *name, size_t name_len, size_t index) {
    if (set->count == CLOSE_MAX && set->distance == 0) return 0;
    size_t limit = set->count == CLOSE_MAX ? set->distance - 1 : set->distance;
    if ((query_len > name_len ? query_len - name_len : name_len - query_len) > limit) return 0;
    if (name_len + 1 > set->rows_len) {
        size_t *rows = PyMem_Realloc(set->rows, 2 * (name_len + 1) * sizeof(size_t));
        if (!rows) {
            PyErr_NoMemory();
            return -1;
        }
        set->rows = rows;
        set->rows_len = name_len + 1;
    }
    size_t d = bounded_distance(query, query_len, name, name_len, limit, set->rows,
                                set->rows + set->rows_len);
    if (d > limit) return 0;
    if (d < set->distance) {
        set->distance = d;
        set->count = 0;
    }
    if (set->count < CLOSE_MAX) set->index[set->count++] = index;
    return 0;
}

/* "; did you mean 'a', 'b' or 'c'?" for the names found, or "". */
static PyObject *did_you_mean(PyObject *const *names, size_t count) {
    switch (count) {
    case 0:
        return PyUnicode_FromString("");
    case 1:
        return PyUnicode_FromFormat("; did you mean %R?", names[0]);
    case 2:
        return PyUnicode_FromFormat("; did you mean %R or %R?", names[0], names[1]);
    default:
        return PyUnicode_FromFormat("; did you mean %R, %R or %R?", names[0], names[1],
                                    names[2]);
    }
}

/* The did_you_mean text for a name missing from an open file. */
static PyObject *close_names_in_file(const stc_file *file, const char *query, size_t query_len) {
    close_set set;
    close_init(&set, query_len);
    size_t n = stc_tensor_count(file);
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_name_order(file, i);
        if (close_consider(&set, query, query_len, t->name, t->name_len, i) < 0) {
            PyMem_Free(set.rows);
            return NULL;
        }
    }
    PyMem_Free(set.rows);
    PyObject *names[CLOSE_MAX] = {NULL};
    PyObject *result = NULL;
    for (size_t k = 0; k < set.count; k++) {
        const stc_tensor *t = stc_tensor_by_name_order(file, set.index[k]);
        names[k] = PyUnicode_DecodeUTF8(t->name, (Py_ssize_t)t->name_len, "replace");
        if (!names[k]) goto done;
    }
    result = did_you_mean(names, set.count);
done:
    for (size_t k = 0; k < CLOSE_MAX; k++) Py_XDECREF(names[k]);
    return result;
}

PyObject *stcpy_close_names(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *query, *candidates;
    if (!PyArg_ParseTuple(args, "UO:close_names", &query, &candidates)) return NULL;
    PyObject *seq = PySequence_Fast(candidates, "candidates must be a sequence of str");
    if (!seq) return NULL;
    Py_ssize_t query_len;
    const char *q = PyUnicode_AsUTF8AndSize(query, &query_len);
    close_set set;
    close_init(&set, q ? (size_t)query_len : 0);
    PyObject *result = NULL;
    if (!q) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) continue;
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(item, &len);
        if (!name) {
            PyErr_Clear(); /* a lone surrogate: never close to a real name */
            continue;
        }
        if (close_consider(&set, q, (size_t)query_len, name, (size_t)len, (size_t)i) < 0)
            goto done;
    }
    result = PyList_New((Py_ssize_t)set.count);
    if (!result) goto done;
    for (size_t k = 0; k < set.count; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)set.index[k]);
        PyList_SET_ITEM(result, (Py_ssize_t)k, Py_NewRef(item));
    }
done:
    PyMem_Free(set.rows);
    Py_DECREF(seq);
    return result;
}

/* MARK: - Lookups */

/* The tensor called `name` (a str), or NULL with SafetensorError/TypeError. */
static const stc_tensor *lookup(module_state *st, file_object *f, PyObject *name) {
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "tensor names are str, not %.100s", Py_TYPE(name)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(name, &len);
    if (!utf8) {
        /* Lone surrogates cannot be in any file: report the name as absent. */
        PyErr_Clear();
        len = -1;
    }
    const stc_tensor *t = len >= 0 ? stc_find_tensor(f->file, utf8, (size_t)len) : NULL;
    if (!t) {
        PyObject *where = stcpy_path_prefix(f->filename);
        PyObject *hint = len >= 0 ? close_names_in_file(f->file, utf8, (size_t)len)
                                  : PyUnicode_FromString("");
        if (where && hint)
            stcpy_raise_coded(st, "STC_ERR_NO_SUCH_TENSOR", "%Uno tensor named %R in this file%U",
                        where, name, hint);
        Py_XDECREF(where);
        Py_XDECREF(hint);
    }
    return t;
}

static PyObject *name_of(const stc_tensor *t) {
    return PyUnicode_DecodeUTF8(t->name, (Py_ssize_t)t->name_len, NULL);
}

/* Raises if the mapped file shrank under us: touching the lost pages would
 * kill the process with SIGBUS instead of raising. */
static int check_unchanged(module_state *st, file_object *f) {
    stc_error error;
    if (stc_check_unchanged(f->file, &error) != STC_OK) {
        stcpy_raise_core_error(st, &error, f->filename);
        return -1;
    }
    return 0;
}

/* MARK: - Methods */

typedef const stc_tensor *(*tensor_at_fn)(const stc_file *, size_t);

static PyObject *names_in_order(file_object *f, tensor_at_fn at) {
    size_t n = stc_tensor_count(f->file);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *name = name_of(at(f->file, i));
        if (!name) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, name);
    }
    return list;
}

static PyObject *file_keys(PyObject *self, PyObject *unused) {
    (void)unused;
    return names_in_order((file_object *)self, stc_tensor_by_name_order);
}

static PyObject *file_offset_keys(PyObject *self, PyObject *unused) {
    (void)unused;
    return names_in_order((file_object *)self, stc_tensor_by_offset_order);
}

static PyObject *file_metadata(PyObject *self, PyObject *unused) {
    (void)unused;
    file_object *f = (file_object *)self;
    if (!stc_has_metadata(f->file)) Py_RETURN_NONE;
    PyObject *dict = PyDict_New();
    if (!dict) return NULL;
    for (size_t i = 0; i < stc_metadata_count(f->file); i++) {
        const stc_string_pair *p = stc_metadata_at(f->file, i);
        PyObject *k = PyUnicode_DecodeUTF8(p->key, (Py_ssize_t)p->key_len, NULL);
        PyObject *v = k ? PyUnicode_DecodeUTF8(p->value, (Py_ssize_t)p->value_len, NULL) : NULL;
        if (!v || PyDict_SetItem(dict, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return dict;
}

static PyObject *file_tensor(PyObject *self, PyObject *name) {
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    const stc_tensor *t = lookup(st, f, name);
    if (!t || check_unchanged(st, f) < 0) return NULL;
    return stcpy_tensor_to_array(st, f, t);
}

static PyObject *file_peek(PyObject *self, PyObject *name) {
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    const stc_tensor *t = lookup(st, f, name);
    if (!t || check_unchanged(st, f) < 0) return NULL;
    return stcpy_tensor_to_peek_array(st, f, t);
}

static PyObject *file_tensors(PyObject *self, PyObject *unused) {
    (void)unused;
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    if (check_unchanged(st, f) < 0) return NULL;
    return stcpy_tensors_to_dict(st, f);
}

static PyObject *file_info(PyObject *self, PyObject *name) {
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    const stc_tensor *t = lookup(st, f, name);
    if (!t) return NULL;
    npy_intp np_dims[NPY_MAXDIMS];
    uint64_t np_dims_u[NPY_MAXDIMS];
    int nd = stcpy_numpy_shape(st, t, np_dims);
    if (nd < 0) return NULL;
    for (int d = 0; d < nd; d++) np_dims_u[d] = (uint64_t)np_dims[d];
    PyObject *shape = stcpy_dims_tuple(t->shape, t->ndim);
    PyObject *np_shape = shape ? stcpy_dims_tuple(np_dims_u, (size_t)nd) : NULL;
    if (!np_shape) {
        Py_XDECREF(shape);
        return NULL;
    }
    return Py_BuildValue("(sNNKK)", stc_dtype_name(t->dtype), shape, np_shape,
                         (unsigned long long)t->begin, (unsigned long long)t->end);
}

/* (name, dtype code, shape, begin, end) of every tensor, in data order: the
 * whole table in one call, for callers that check many tensors. */
static PyObject *file_table(PyObject *self, PyObject *unused) {
    (void)unused;
    file_object *f = (file_object *)self;
    size_t n = stc_tensor_count(f->file);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list) return NULL;
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_offset_order(f->file, i);
        PyObject *name = name_of(t);
        PyObject *shape = name ? stcpy_dims_tuple(t->shape, t->ndim) : NULL;
        PyObject *row = shape ? Py_BuildValue("(NsNKK)", name, stc_dtype_name(t->dtype), shape,
                                              (unsigned long long)t->begin,
                                              (unsigned long long)t->end)
                              : NULL;
        if (!row) {
            if (!shape) Py_XDECREF(name);
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, row);
    }
    return list;
}

static PyObject *file_read_view(PyObject *self, PyObject *args) {
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    PyObject *name, *shape, *strides;
    unsigned long long offset;
    if (!PyArg_ParseTuple(args, "OKOO:read_view", &name, &offset, &shape, &strides)) return NULL;
    const stc_tensor *t = lookup(st, f, name);
    if (!t || check_unchanged(st, f) < 0) return NULL;
    return stcpy_read_view_to_array(st, f, t, offset, shape, strides);
}

static int file_contains(PyObject *self, PyObject *name) {
    file_object *f = (file_object *)self;
    if (!PyUnicode_Check(name)) return 0;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(name, &len);
    if (!utf8) {
        PyErr_Clear();
        return 0;
    }
    return stc_find_tensor(f->file, utf8, (size_t)len) != NULL;
}

static Py_ssize_t file_len(PyObject *self) {
    return (Py_ssize_t)stc_tensor_count(((file_object *)self)->file);
}

static PyObject *get_writable(PyObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(stc_data_writable(((file_object *)self)->file));
}

static PyObject *get_mapped(PyObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(stc_is_mapped(((file_object *)self)->file));
}

static PyObject *get_backend(PyObject *self, void *closure) {
    (void)closure;
    stc_backend backend = stc_file_backend(((file_object *)self)->file);
    return PyUnicode_FromString(backend == STC_BACKEND_PREAD ? "pread" : "mmap");
}

static PyObject *get_filename(PyObject *self, void *closure) {
    (void)closure;
    file_object *f = (file_object *)self;
    if (!f->filename) Py_RETURN_NONE;
    return Py_NewRef(f->filename);
}

static PyObject *get_data_start(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(stc_data_start(((file_object *)self)->file));
}

static PyObject *get_file_size(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(stc_file_size(((file_object *)self)->file));
}

/* MARK: - Reading into caller buffers */

static PyObject *file_read_into(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"name", "buffer", "byte_offset", "direct_fd", "align", NULL};
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    PyObject *name, *buffer;
    unsigned long long byte_offset = 0;
    int direct_fd = -1;
    Py_ssize_t align = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|K$in:read_into", keywords, &name, &buffer,
                                     &byte_offset, &direct_fd, &align))
        return NULL;
    const stc_tensor *t = lookup(st, f, name);
    if (!t) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    size_t len = (size_t)view.len;
    if (byte_offset > t->nbytes || len > t->nbytes - byte_offset) {
        stcpy_raise_coded(st, "STC_ERR_INVALID_ARGUMENT",
                     "tensor %R holds %llu bytes: %zu bytes from byte %llu reach past its end",
                     name, (unsigned long long)t->nbytes, len, byte_offset);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (align <= 0 || (align & (align - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "align must be a power of two, not %zd", align);
        PyBuffer_Release(&view);
        return NULL;
    }
    if (check_unchanged(st, f) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    stc_error error;
    stc_status status;
    size_t direct_bytes = 0;
    void *dst = view.buf;
    /* A tensor handed out may have been written through its view: read the
     * file, not the mapping (the range was checked to lie inside t). */
    int from_file = stcpy_was_handed_out(f, t);
    /* Without the GIL: the copy or read touches only the file's C state
     * (immutable after opening, and kept alive by the reference the call
     * holds on self) and the caller's memory, pinned by the buffer export
     * until PyBuffer_Release below. Other threads may read other ranges,
     * of this tensor or others, at the same time. */
    Py_BEGIN_ALLOW_THREADS
    if (from_file)
        status = stc_read_file(f->file, t->begin + byte_offset, len, dst, &error);
    else if (direct_fd >= 0)
        status = stc_read_tensor_direct(f->file, t, byte_offset, len, dst, direct_fd,
                                        (size_t)align, &direct_bytes, &error);
    else
        status = stc_read_tensor_into(f->file, t, byte_offset, len, dst, &error);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (status != STC_OK) return stcpy_raise_core_error(st, &error, f->filename);
    return PyLong_FromSize_t(direct_bytes);
}

/* MARK: - Batches of copies into caller memory */

/* One destination of read_batch, sorted by address for the checks. */
typedef struct {
    uintptr_t begin, end;
    size_t index;
} span;

static int compare_spans(const void *a, const void *b) {
    uintptr_t x = ((const span *)a)->begin, y = ((const span *)b)->begin;
    return x < y ? -1 : x > y;
}

/* The process's writable mappings, [begin, end) pairs sorted by address with
 * touching ones merged, read from /proc/self/maps; NULL with OSError or
 * MemoryError. *count gets the number of pairs. The caller frees. */
static uintptr_t *writable_regions(size_t *count) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return (uintptr_t *)PyErr_SetFromErrnoWithFilename(PyExc_OSError,
                                                                   "/proc/self/maps");
    size_t n = 0, cap = 256;
    uintptr_t *regions = PyMem_Malloc(2 * cap * sizeof(uintptr_t));
    char line[512];
    while (regions && fgets(line, sizeof line, maps)) {
        unsigned long long begin, end;
        char perms[5];
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] != '\n') { /* a long path: skip the rest of its line */
            int ch;
            while ((ch = fgetc(maps)) != EOF && ch != '\n') {
            }
        }
        if (sscanf(line, "%llx-%llx %4s", &begin, &end, perms) != 3 || perms[1] != 'w')
            continue;
        if (n && regions[2 * n - 1] == (uintptr_t)begin) {
            regions[2 * n - 1] = (uintptr_t)end;
            continue;
        }
        if (n == cap) {
            cap *= 2;
            uintptr_t *grown = PyMem_Realloc(regions, 2 * cap * sizeof(uintptr_t));
            if (!grown) {
                PyMem_Free(regions);
                regions = NULL;
                break;
            }
            regions = grown;
        }
        regions[2 * n] = (uintptr_t)begin;
        regions[2 * n + 1] = (uintptr_t)end;
        n++;
    }
    fclose(maps);
    if (!regions) return (uintptr_t *)PyErr_NoMemory();
    *count = n;
    return regions;
}

/* Raises unless every span (sorted) lies inside the process's writable
 * memory, apart from the others and from the file's own data. */
static int check_spans(module_state *st, file_object *f, const span *spans, size_t n,
                       PyObject *names) {
    const uint8_t *data = stc_data(f->file);
    uintptr_t data_begin = (uintptr_t)data;
    uintptr_t data_end = data ? data_begin + (uintptr_t)(stc_file_size(f->file) -
                                                         stc_data_start(f->file)) : 0;
    for (size_t i = 0; i < n; i++) {
        PyObject *name = PyList_GET_ITEM(names, (Py_ssize_t)spans[i].index);
        if (i + 1 < n && spans[i + 1].begin < spans[i].end) {
            PyObject *other = PyList_GET_ITEM(names, (Py_ssize_t)spans[i + 1].index);
            PyErr_Format(PyExc_ValueError,
                         "the destinations of %R and %R share memory; give each tensor its own",
                         name, other);
            return -1;
        }
        if (data && spans[i].begin < data_end && data_begin < spans[i].end) {
            PyErr_Format(PyExc_ValueError,
                         "the destination of %R lies inside the file's own data", name);
            return -1;
        }
    }
    size_t regions_n = 0;
    uintptr_t *regions = writable_regions(&regions_n);
    if (!regions) return -1;
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        while (r < regions_n && regions[2 * r + 1] <= spans[i].begin) r++;
        if (r == regions_n || regions[2 * r] > spans[i].begin || regions[2 * r + 1] < spans[i].end) {
            PyObject *name = PyList_GET_ITEM(names, (Py_ssize_t)spans[i].index);
            PyMem_Free(regions);
            stcpy_raise_coded(st, "STC_ERR_INVALID_ARGUMENT",
                        "the destination of %R (%zu bytes at 0x%zx) is not writable memory of "
                        "this process", name, (size_t)(spans[i].end - spans[i].begin),
                        (size_t)spans[i].begin);
            return -1;
        }
    }
    PyMem_Free(regions);
    return 0;
}

/* The int at position i of a sequence from PySequence_Fast, as a size. */
static int size_at(PyObject *seq, Py_ssize_t i, unsigned long long *out) {
    *out = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *file_read_batch(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"names", "addresses", "lengths", "threads", "chunk_size",
                               "drop_cache", "direct_fd", "align", NULL};
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    PyObject *names_arg, *addresses_arg, *lengths_arg;
    unsigned int threads = 1;
    Py_ssize_t chunk_size = 0, align = 4096;
    int drop_cache = 0, direct_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|$InpIn:read_batch", keywords,
                                     &names_arg, &addresses_arg, &lengths_arg, &threads,
                                     &chunk_size, &drop_cache, &direct_fd, &align))
        return NULL;
    if (!PyList_Check(names_arg)) {
        PyErr_SetString(PyExc_TypeError, "names must be a list of str");
        return NULL;
    }
    if (chunk_size < 0 || align <= 0 || (align & (align - 1)) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "chunk_size must be >= 0 and align a power of two, not %zd and %zd",
                     chunk_size, align);
        return NULL;
    }
    PyObject *addresses = PySequence_Fast(addresses_arg, "addresses must be a sequence of int");
    PyObject *lengths = addresses ? PySequence_Fast(lengths_arg,
                                                    "lengths must be a sequence of int") : NULL;
    PyObject *result = NULL;
    stc_copy *copies = NULL;
    span *spans = NULL;
    if (!lengths) goto done;
    Py_ssize_t n = PyList_GET_SIZE(names_arg);
    if (PySequence_Fast_GET_SIZE(addresses) != n || PySequence_Fast_GET_SIZE(lengths) != n) {
        PyErr_Format(PyExc_ValueError, "%zd names, %zd addresses and %zd lengths: give one "
                     "address and one length per name", n, PySequence_Fast_GET_SIZE(addresses),
                     PySequence_Fast_GET_SIZE(lengths));
        goto done;
    }
    copies = PyMem_Calloc((size_t)n + 1, sizeof(stc_copy));
    spans = PyMem_Calloc((size_t)n + 1, sizeof(span));
    if (!copies || !spans) {
        PyErr_NoMemory();
        goto done;
    }
    size_t n_spans = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyList_GET_ITEM(names_arg, i);
        const stc_tensor *t = lookup(st, f, name);
        unsigned long long address, length;
        if (!t || size_at(addresses, i, &address) < 0 || size_at(lengths, i, &length) < 0)
            goto done;
        if (length != t->nbytes) {
            PyObject *where = stcpy_path_prefix(f->filename);
            if (where)
                stcpy_raise_coded(st, "STC_ERR_SIZE_MISMATCH",
                            "%Utensor %R holds %llu bytes; its destination has %llu", where, name,
                            (unsigned long long)t->nbytes, length);
            Py_XDECREF(where);
            goto done;
        }
        if (length && (address == 0 || address > UINTPTR_MAX - length)) {
            stcpy_raise_coded(st, "STC_ERR_INVALID_ARGUMENT",
                        "the destination of %R is not an address of this process", name);
            goto done;
        }
        copies[i] = (stc_copy){.tensor = t, .len = (size_t)length, .dst = (void *)(uintptr_t)address,
                               .from_file = stcpy_was_handed_out(f, t)};
        if (length)
            spans[n_spans++] = (span){(uintptr_t)address, (uintptr_t)(address + length),
                                      (size_t)i};
    }
    qsort(spans, n_spans, sizeof(span), compare_spans);
    if (check_spans(st, f, spans, n_spans, names_arg) < 0 || check_unchanged(st, f) < 0)
        goto done;
    stc_batch_options options = {.threads = threads, .chunk_size = (size_t)chunk_size,
                                 .direct_fd = direct_fd, .align = (size_t)align,
                                 .drop_cache = drop_cache};
    stc_error error;
    stc_status status;
    size_t direct_bytes = 0;
    /* Without the GIL: the core reads only the file's C state (immutable
     * after opening; self is kept alive by this call) and writes only the
     * destinations, which were checked above to be disjoint, writable memory
     * of this process outside the file's data; the caller keeps the objects
     * owning them alive for the call (the Python layer holds them). */
    Py_BEGIN_ALLOW_THREADS
    status = stc_read_batch(f->file, copies, (size_t)n, &options, &direct_bytes, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        stcpy_raise_core_error(st, &error, f->filename);
        goto done;
    }
    result = PyLong_FromSize_t(direct_bytes);
done:
    PyMem_Free(copies);
    PyMem_Free(spans);
    Py_XDECREF(addresses);
    Py_XDECREF(lengths);
    return result;
}

static PyObject *file_prefetch(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"name", "byte_offset", "length", "populate", NULL};
    module_state *st = state_of_self(self);
    file_object *f = (file_object *)self;
    PyObject *name, *length = Py_None;
    unsigned long long byte_offset = 0;
    int populate = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|KO$p:prefetch", keywords, &name,
                                     &byte_offset, &length, &populate))
        return NULL;
    const stc_tensor *t = lookup(st, f, name);
    if (!t) return NULL;
    unsigned long long len;
    if (length == Py_None) {
        len = byte_offset <= t->nbytes ? t->nbytes - byte_offset : 0;
    } else {
        len = PyLong_AsUnsignedLongLong(length);
        if (PyErr_Occurred()) return NULL;
    }
    if (byte_offset > t->nbytes || len > t->nbytes - byte_offset) {
        stcpy_raise_coded(st, "STC_ERR_INVALID_ARGUMENT",
                     "tensor %R holds %llu bytes: %llu bytes from byte %llu reach past its end",
                     name, (unsigned long long)t->nbytes, len, byte_offset);
        return NULL;
    }
    if (check_unchanged(st, f) < 0) return NULL;
    stc_error error;
    stc_status status;
    /* Without the GIL: madvise on the file's own mapping; populating it
     * blocks on the storage, which is the point of calling it in a worker. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_prefetch_tensor(f->file, t, byte_offset, (size_t)len, populate, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) return stcpy_raise_core_error(st, &error, f->filename);
    Py_RETURN_NONE;
}

/* MARK: - Type */

static void file_dealloc(PyObject *self) {
    file_object *f = (file_object *)self;
    PyTypeObject *type = Py_TYPE(self);
    stc_close(f->file);
    PyMem_Free(f->handed_out);
    if (f->has_image) PyBuffer_Release(&f->image);
    Py_XDECREF(f->filename);
    PyObject_Free(self);
    Py_DECREF(type);
}

static PyMethodDef file_methods[] = {
    {"keys", file_keys, METH_NOARGS,
     "keys($self, /)\n--\n\nTensor names, sorted."},
    {"offset_keys", file_offset_keys, METH_NOARGS,
     "offset_keys($self, /)\n--\n\nTensor names in the order of their data in the file."},
    {"metadata", file_metadata, METH_NOARGS,
     "metadata($self, /)\n--\n\nThe __metadata__ dict, or None."},
    {"tensor", file_tensor, METH_O,
     "tensor($self, name, /)\n--\n\nThe tensor as a NumPy array: a view into the mapping on "
     "its first access, fresh from the file (never aliasing an earlier array) afterwards."},
    {"peek", file_peek, METH_O,
     "peek($self, name, /)\n--\n\nThe tensor's bytes for a check that only reads: a read-only "
     "view while the tensor was never handed out (its pages are still the file's), else a fresh "
     "read. Does not count as handing the tensor out."},
    {"tensors", file_tensors, METH_NOARGS,
     "tensors($self, /)\n--\n\nA dict of every tensor, in data order. The first access of a "
     "tensor is a view (when mapped); a tensor handed out before comes fresh from the file."},
    {"info", file_info, METH_O,
     "info($self, name, /)\n--\n\n(dtype code, shape, NumPy shape, begin, end) of a tensor."},
    {"table", file_table, METH_NOARGS,
     "table($self, /)\n--\n\n(name, dtype code, shape, begin, end) of every tensor, in the "
     "order of their data in the file."},
    {"read_view", file_read_view, METH_VARARGS,
     "read_view($self, name, offset, shape, strides, /)\n--\n\n"
     "Gathers a strided view of a tensor (byte offset and strides relative to the tensor) "
     "into a new array."},
    {"read_into", (PyCFunction)(void (*)(void))file_read_into, METH_VARARGS | METH_KEYWORDS,
     "read_into($self, name, buffer, byte_offset=0, *, direct_fd=-1, align=4096)\n--\n\n"
     "Copies len(buffer) bytes of a tensor, from byte_offset on, into a writable C-contiguous "
     "buffer, without the GIL. With direct_fd (a descriptor of this file opened with O_DIRECT; "
     "pread backend only) aligned blocks bypass the page cache. Returns how many bytes were "
     "read with O_DIRECT."},
    {"read_batch", (PyCFunction)(void (*)(void))file_read_batch, METH_VARARGS | METH_KEYWORDS,
     "read_batch($self, names, addresses, lengths, *, threads=1, chunk_size=0, "
     "drop_cache=False, direct_fd=-1, align=4096)\n--\n\n"
     "Copies every named tensor whole to its destination (addresses[i], lengths[i] bytes, "
     "which must equal the tensor's size) in one call without the GIL, on up to `threads` of "
     "the core's threads; large tensors are split between them (chunk_size: the most bytes "
     "one thread takes at a time, 0 for the default). Every destination is checked first: "
     "writable memory of this process (/proc/self/maps), apart from the others and from the "
     "file's own data. The caller keeps the memory alive for the call. drop_cache drops the "
     "copied pages from the page cache; direct_fd as for read_into. Returns how many bytes "
     "were read with O_DIRECT."},
    {"prefetch", (PyCFunction)(void (*)(void))file_prefetch, METH_VARARGS | METH_KEYWORDS,
     "prefetch($self, name, byte_offset=0, length=None, *, populate=True)\n--\n\n"
     "Brings a mapped tensor's pages (or a range of them) into memory now: faults them in "
     "with populate, else starts read-ahead. Does nothing without a mapping."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef file_getset[] = {
    {"writable", get_writable, NULL, "Whether arrays are writable views.", NULL},
    {"mapped", get_mapped, NULL, "Whether the file is memory-mapped.", NULL},
    {"backend", get_backend, NULL,
     "The backend the file was opened with, \"mmap\" or \"pread\" (\"auto\" resolved).", NULL},
    {"filename", get_filename, NULL, "The path opened, or None for images.", NULL},
    {"data_start", get_data_start, NULL, "File offset of the data section.", NULL},
    {"file_size", get_file_size, NULL, "Size of the file in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot file_slots[] = {
    {Py_tp_dealloc, file_dealloc},
    {Py_tp_methods, file_methods},
    {Py_tp_getset, file_getset},
    {Py_sq_length, file_len},
    {Py_sq_contains, file_contains},
    {Py_tp_doc, "An opened safetensors file: the owner of its mapping and parsed header."},
    {0, NULL},
};

PyType_Spec stcpy_file_type_spec = {
    .name = "safetensors_c._core._File",
    .basicsize = sizeof(file_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = file_slots,
};
