/*
 * writer.c - save glue: Python arrays in, a file or bytes out.
 *
 * The core plans the layout and the header; this file feeds it each
 * array's buffer in file order. Every array's size is checked before the
 * temporary file is created. C-contiguous arrays are written straight from
 * their memory, all in one stretch without the GIL; others are copied one
 * at a time into C order, so memory never holds more than one extra tensor.
 */
#include "binding.h"

/* The inputs, checked and converted once. Holds references to everything
 * the specs point into, so nothing moves while the GIL is released. */
typedef struct save_inputs {
    PyObject *names;  /* tuple of str */
    PyObject *arrays; /* tuple of ndarray */
    PyObject *shapes; /* tuple of tuple-or-list of integers */
    Py_ssize_t count;
    stc_tensor_spec *specs;
    uint64_t *dims;
    PyObject *meta_items; /* list of (str, str), or NULL */
    stc_string_pair *meta;
    Py_ssize_t meta_count;
} save_inputs;

static void release_inputs(save_inputs *in) {
    Py_XDECREF(in->names);
    Py_XDECREF(in->arrays);
    Py_XDECREF(in->shapes);
    Py_XDECREF(in->meta_items);
    PyMem_Free(in->specs);
    PyMem_Free(in->dims);
    PyMem_Free(in->meta);
}

static int utf8_of(PyObject *s, const char **ptr, size_t *len, const char *what) {
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what, Py_TYPE(s)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    *ptr = PyUnicode_AsUTF8AndSize(s, &n);
    if (!*ptr) return -1;
    *len = (size_t)n;
    return 0;
}

/* One dimension: an int, or anything with __index__ (NumPy integers). */
static int dimension_of(PyObject *item, uint64_t *out) {
    if (PyLong_CheckExact(item)) {
        *out = PyLong_AsUnsignedLongLong(item);
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *index = PyNumber_Index(item);
    if (!index) return -1;
    *out = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    return PyErr_Occurred() ? -1 : 0;
}

/* The shapes, each turned into a tuple or list once (a tuple is kept). */
static PyObject *shapes_as_sequences(PyObject *shapes, Py_ssize_t *total_dims) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(shapes);
    PyObject *out = PyTuple_New(n);
    if (!out) return NULL;
    *total_dims = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *shape = PySequence_Fast(PySequence_Fast_GET_ITEM(shapes, i),
                                          "shapes must be sequences of integers");
        if (!shape) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, shape);
        *total_dims += PySequence_Fast_GET_SIZE(shape);
    }
    return out;
}

static int fill_specs(save_inputs *in, PyObject *codes, PyObject *shapes) {
    Py_ssize_t n = in->count;
    if (PySequence_Fast_GET_SIZE(codes) != n || PySequence_Fast_GET_SIZE(shapes) != n) {
        PyErr_SetString(PyExc_ValueError, "names, codes, shapes and arrays differ in length");
        return -1;
    }
    Py_ssize_t total_dims;
    in->shapes = shapes_as_sequences(shapes, &total_dims);
    if (!in->shapes) return -1;
    in->specs = PyMem_Calloc((size_t)n + 1, sizeof *in->specs);
    in->dims = PyMem_Calloc((size_t)total_dims + 1, sizeof *in->dims);
    if (!in->specs || !in->dims) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t *dims = in->dims;
    for (Py_ssize_t i = 0; i < n; i++) {
        stc_tensor_spec *spec = &in->specs[i];
        if (utf8_of(PyTuple_GET_ITEM(in->names, i), &spec->name, &spec->name_len,
                    "tensor names") < 0)
            return -1;
        const char *code;
        size_t code_len;
        if (utf8_of(PySequence_Fast_GET_ITEM(codes, i), &code, &code_len, "dtype codes") < 0)
            return -1;
        if (!stc_dtype_from_name(code, code_len, &spec->dtype)) {
            PyErr_Format(PyExc_ValueError, "unknown dtype code %R",
                         PySequence_Fast_GET_ITEM(codes, i));
            return -1;
        }
        PyObject *shape = PyTuple_GET_ITEM(in->shapes, i);
        spec->ndim = (size_t)PySequence_Fast_GET_SIZE(shape);
        spec->shape = dims;
        for (size_t d = 0; d < spec->ndim; d++) {
            if (dimension_of(PySequence_Fast_GET_ITEM(shape, (Py_ssize_t)d), &dims[d]) < 0)
                return -1;
        }
        dims += spec->ndim;
        PyObject *array = PyTuple_GET_ITEM(in->arrays, i);
        if (!PyArray_Check(array)) {
            PyErr_Format(PyExc_TypeError, "expected a numpy.ndarray, not %.100s",
                         Py_TYPE(array)->tp_name);
            return -1;
        }
    }
    return 0;
}

static int fill_metadata(save_inputs *in, PyObject *metadata) {
    if (metadata == Py_None) return 0;
    if (!PyDict_Check(metadata)) {
        PyErr_SetString(PyExc_TypeError, "metadata must be a dict of str to str, or None");
        return -1;
    }
    in->meta_items = PyDict_Items(metadata);
    if (!in->meta_items) return -1;
    in->meta_count = PyList_GET_SIZE(in->meta_items);
    in->meta = PyMem_Calloc((size_t)in->meta_count + 1, sizeof *in->meta);
    if (!in->meta) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < in->meta_count; i++) {
        PyObject *item = PyList_GET_ITEM(in->meta_items, i);
        stc_string_pair *p = &in->meta[i];
        if (utf8_of(PyTuple_GET_ITEM(item, 0), &p->key, &p->key_len, "metadata keys") < 0 ||
            utf8_of(PyTuple_GET_ITEM(item, 1), &p->value, &p->value_len, "metadata values") < 0)
            return -1;
    }
    return 0;
}

/* Checks that array i holds exactly the bytes the plan gives it. */
static int check_nbytes(module_state *st, save_inputs *in, Py_ssize_t i, uint64_t nbytes) {
    PyArrayObject *array = (PyArrayObject *)PyTuple_GET_ITEM(in->arrays, i);
    if ((uint64_t)PyArray_NBYTES(array) == nbytes) return 0;
    stcpy_raise_coded(st, "STC_ERR_SIZE_MISMATCH",
                 "tensor %R: the array holds %zd bytes but its dtype and shape need %llu",
                 PyTuple_GET_ITEM(in->names, i), PyArray_NBYTES(array),
                 (unsigned long long)nbytes);
    return -1;
}

/* Every array's size, checked before anything is written or allocated. */
static int check_all_nbytes(module_state *st, save_inputs *in, const stc_plan *plan) {
    for (Py_ssize_t i = 0; i < in->count; i++)
        if (check_nbytes(st, in, i, stc_plan_nbytes(plan, (size_t)i)) < 0) return -1;
    return 0;
}

/* MARK: - Files */

/* Buffers waiting to be written, in file order: consecutive C-contiguous
 * arrays are written in one stretch without the GIL (the core gathers the
 * small ones into few large writes). */
typedef struct pending_run {
    const void **data;
    size_t *len;
    size_t n;
} pending_run;

static stc_status write_run(stc_output *out, pending_run *run, stc_error *error) {
    stc_status status = STC_OK;
    /* Without the GIL: every pointer is into the plan's header or into an
     * array that `in` holds a reference to, so the buffers stay allocated;
     * NumPy cannot resize an array whose buffer has other references. */
    Py_BEGIN_ALLOW_THREADS
    for (size_t j = 0; j < run->n && status == STC_OK; j++)
        status = stc_output_write(out, run->data[j], run->len[j], error);
    Py_END_ALLOW_THREADS
    run->n = 0;
    return status;
}

static PyObject *write_file(module_state *st, save_inputs *in, stc_plan *plan,
                            PyObject *path_bytes, PyObject *path) {
    stc_error error;
    stc_status status;
    stc_output *out = NULL;
    const char *cpath = PyBytes_AS_STRING(path_bytes);
    pending_run run = {0};
    if (check_all_nbytes(st, in, plan) < 0) return NULL;
    run.data = PyMem_Calloc((size_t)in->count + 1, sizeof *run.data);
    run.len = PyMem_Calloc((size_t)in->count + 1, sizeof *run.len);
    if (!run.data || !run.len) {
        PyErr_NoMemory();
        goto python_error;
    }
    /* Without the GIL: the path bytes are referenced by the caller. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_output_open(cpath, NULL, &out, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) goto core_error;
    size_t header_len;
    run.data[0] = stc_plan_header(plan, &header_len);
    run.len[0] = header_len;
    run.n = 1;
    for (Py_ssize_t i = 0; i < in->count; i++) {
        size_t k = stc_plan_order(plan, (size_t)i);
        PyArrayObject *array = (PyArrayObject *)PyTuple_GET_ITEM(in->arrays, (Py_ssize_t)k);
        size_t nbytes = (size_t)stc_plan_nbytes(plan, k);
        if (PyArray_IS_C_CONTIGUOUS(array)) {
            run.data[run.n] = PyArray_DATA(array);
            run.len[run.n++] = nbytes;
            continue;
        }
        /* A strided array: write what came before, then a C-ordered copy
         * of it alone, so memory never holds more than one extra tensor. */
        if ((status = write_run(out, &run, &error)) != STC_OK) goto core_error;
        PyObject *copy = PyArray_NewCopy(array, NPY_CORDER);
        if (!copy) goto python_error;
        run.data[0] = PyArray_DATA((PyArrayObject *)copy);
        run.len[0] = nbytes;
        run.n = 1;
        status = write_run(out, &run, &error);
        Py_DECREF(copy);
        if (status != STC_OK) goto core_error;
    }
    if ((status = write_run(out, &run, &error)) != STC_OK) goto core_error;
    Py_BEGIN_ALLOW_THREADS
    status = stc_output_commit(out, &error);
    Py_END_ALLOW_THREADS
    out = NULL; /* released by commit, whatever the outcome */
    if (status != STC_OK) goto core_error;
    PyMem_Free(run.data);
    PyMem_Free(run.len);
    Py_RETURN_NONE;
core_error:
    stc_output_abort(out);
    PyMem_Free(run.data);
    PyMem_Free(run.len);
    return stcpy_raise_core_error(st, &error, PyUnicode_Check(path) ? path : NULL);
python_error:
    stc_output_abort(out);
    PyMem_Free(run.data);
    PyMem_Free(run.len);
    return NULL;
}

/* MARK: - Bytes */

/* Tensors at least this large are copied without the GIL; smaller ones cost
 * less to copy than to release and take the GIL back. */
#define LARGE_COPY ((size_t)1 << 20)

static PyObject *write_bytes(module_state *st, save_inputs *in, stc_plan *plan) {
    uint64_t size = stc_plan_file_size(plan);
    if (size > (uint64_t)PY_SSIZE_T_MAX) return PyErr_NoMemory();
    if (check_all_nbytes(st, in, plan) < 0) return NULL;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (!result) return NULL;
    char *out = PyBytes_AS_STRING(result);
    size_t header_len;
    const uint8_t *header = stc_plan_header(plan, &header_len);
    memcpy(out, header, header_len);
    out += header_len;
    for (Py_ssize_t i = 0; i < in->count; i++) {
        size_t k = stc_plan_order(plan, (size_t)i);
        size_t nbytes = (size_t)stc_plan_nbytes(plan, k);
        PyArrayObject *array = (PyArrayObject *)PyTuple_GET_ITEM(in->arrays, (Py_ssize_t)k);
        if (PyArray_IS_C_CONTIGUOUS(array)) {
            const void *src = PyArray_DATA(array);
            if (nbytes >= LARGE_COPY) {
                /* Without the GIL: both buffers are referenced by us. */
                Py_BEGIN_ALLOW_THREADS
                memcpy(out, src, nbytes);
                Py_END_ALLOW_THREADS
            } else if (nbytes) {
                memcpy(out, src, nbytes);
            }
        } else {
            /* Copy straight into the result through a C-ordered view of it:
             * no intermediate copy of the tensor. */
            PyArray_Descr *descr = PyArray_DESCR(array);
            Py_INCREF(descr);
            PyObject *view = PyArray_NewFromDescr(&PyArray_Type, descr, PyArray_NDIM(array),
                                                  PyArray_DIMS(array), NULL, out,
                                                  NPY_ARRAY_CARRAY, NULL);
            if (!view || PyArray_CopyInto((PyArrayObject *)view, array) < 0) {
                Py_XDECREF(view);
                Py_DECREF(result);
                return NULL;
            }
            Py_DECREF(view);
        }
        out += nbytes;
    }
    return result;
}

PyObject *stcpy_save_tensors(PyObject *module, PyObject *args) {
    module_state *st = stcpy_state_of_module(module);
    PyObject *names, *codes, *shapes, *arrays, *metadata, *path;
    if (!PyArg_ParseTuple(args, "OOOOOO:save", &names, &codes, &shapes, &arrays, &metadata,
                          &path))
        return NULL;
    save_inputs in = {0};
    PyObject *codes_fast = NULL, *shapes_fast = NULL, *path_bytes = NULL, *result = NULL;
    stc_plan *plan = NULL;
    in.names = PySequence_Tuple(names);
    in.arrays = in.names ? PySequence_Tuple(arrays) : NULL;
    codes_fast = in.arrays ? PySequence_Fast(codes, "codes must be a sequence") : NULL;
    shapes_fast = codes_fast ? PySequence_Fast(shapes, "shapes must be a sequence") : NULL;
    if (!shapes_fast) goto done;
    in.count = PyTuple_GET_SIZE(in.names);
    if (PyTuple_GET_SIZE(in.arrays) != in.count) {
        PyErr_SetString(PyExc_ValueError, "names and arrays differ in length");
        goto done;
    }
    if (fill_specs(&in, codes_fast, shapes_fast) < 0 || fill_metadata(&in, metadata) < 0)
        goto done;
    if (path != Py_None && !PyUnicode_FSConverter(path, &path_bytes)) goto done;

    stc_error error;
    stc_status status;
    /* Without the GIL: specs point into str objects that `in` references. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_plan_create(in.specs, (size_t)in.count, in.meta, (size_t)in.meta_count,
                             metadata != Py_None, NULL, &plan, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        stcpy_raise_core_error(st, &error, NULL);
        goto done;
    }
    result = path_bytes ? write_file(st, &in, plan, path_bytes, path) : write_bytes(st, &in, plan);
done:
    stc_plan_free(plan);
    Py_XDECREF(codes_fast);
    Py_XDECREF(shapes_fast);
    Py_XDECREF(path_bytes);
    release_inputs(&in);
    return result;
}
