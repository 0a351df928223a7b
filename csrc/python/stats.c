/*
 * stats.c - the binding of the core's tensor statistics: bytes in, numbers out.
 *
 * The Python layer hands over a tensor's bytes (a view into the mapping, or
 * a piece read from a source) as any buffer; the core decodes and measures
 * them without the GIL.
 */
#include "binding.h"

/* The dtype named by a code such as "BF16", or -1 with ValueError set. */
static int dtype_of(PyObject *code, stc_dtype *out) {
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(code, &len);
    if (!text) return -1;
    if (!stc_dtype_from_name(text, (size_t)len, out)) {
        PyErr_Format(PyExc_ValueError, "unknown safetensors dtype code %R", code);
        return -1;
    }
    return 0;
}

static PyObject *stats_tuple(const stc_stats *s) {
    return Py_BuildValue("(KKKKKdddd)", (unsigned long long)s->count,
                         (unsigned long long)s->nan, (unsigned long long)s->inf,
                         (unsigned long long)s->zeros, (unsigned long long)s->finite, s->min,
                         s->max, s->mean, s->m2);
}

static int stats_from_tuple(PyObject *tuple, stc_stats *s) {
    unsigned long long count, nan, inf, zeros, finite;
    if (!PyArg_ParseTuple(tuple, "KKKKKdddd;a statistics tuple has 9 fields", &count, &nan,
                          &inf, &zeros, &finite, &s->min, &s->max, &s->mean, &s->m2))
        return -1;
    s->count = count;
    s->nan = nan;
    s->inf = inf;
    s->zeros = zeros;
    s->finite = finite;
    return 0;
}

PyObject *stcpy_tensor_stats(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"code", "data", "threads", NULL};
    module_state *st = stcpy_state_of_module(module);
    PyObject *code;
    Py_buffer view;
    unsigned int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Uy*|I:stats", keywords, &code, &view,
                                     &threads))
        return NULL;
    stc_dtype dtype;
    if (dtype_of(code, &dtype) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    stc_stats result;
    stc_error err;
    stc_status status;
    /* Without the GIL: the core reads only view.buf, which the held buffer
     * export keeps alive and unresized, and touches no Python object. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_stats_compute(dtype, view.buf, (size_t)view.len, threads, NULL, &result, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (status != STC_OK) return stcpy_raise_core_error(st, &err, NULL);
    return stats_tuple(&result);
}

PyObject *stcpy_tensor_stats_merge(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *first, *second;
    stc_stats a, b;
    if (!PyArg_ParseTuple(args, "O!O!:stats_merge", &PyTuple_Type, &first, &PyTuple_Type,
                          &second))
        return NULL;
    if (stats_from_tuple(first, &a) < 0 || stats_from_tuple(second, &b) < 0) return NULL;
    stc_stats_merge(&a, &b);
    return stats_tuple(&a);
}

PyObject *stcpy_tensor_histogram(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"code", "data", "lo", "hi", "bins", "threads", NULL};
    module_state *st = stcpy_state_of_module(module);
    PyObject *code;
    Py_buffer view;
    double lo, hi;
    Py_ssize_t bins;
    unsigned int threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Uy*ddn|I:histogram", keywords, &code,
                                     &view, &lo, &hi, &bins, &threads))
        return NULL;
    stc_dtype dtype;
    uint64_t *counts = NULL;
    PyObject *list = NULL;
    if (dtype_of(code, &dtype) < 0) goto done;
    if (bins < 1 || bins > 4096) {
        PyErr_SetString(PyExc_ValueError, "bins must be between 1 and 4096");
        goto done;
    }
    counts = PyMem_Calloc((size_t)bins, sizeof *counts);
    if (!counts) {
        PyErr_NoMemory();
        goto done;
    }
    stc_error err;
    stc_status status;
    /* Without the GIL: as in tensor_stats; counts is this call's own. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_stats_histogram(dtype, view.buf, (size_t)view.len, lo, hi, (size_t)bins,
                                 counts, threads, NULL, &err);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        stcpy_raise_core_error(st, &err, NULL);
        goto done;
    }
    list = PyList_New(bins);
    if (!list) goto done;
    for (Py_ssize_t i = 0; i < bins; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong((unsigned long long)counts[i]);
        if (!n) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, n);
    }
done:
    PyMem_Free(counts);
    PyBuffer_Release(&view);
    return list;
}
