/*
 * module.c - the safetensors_c._core extension module: multi-phase init,
 * module state, and the module-level functions.
 */
#define STC_BINDING_IMPORTS_NUMPY
#include "binding.h"

static struct PyModuleDef core_module;

module_state *stcpy_state_of_module(PyObject *module) { return PyModule_GetState(module); }

module_state *stcpy_state_of_type(PyTypeObject *type) { return PyType_GetModuleState(type); }

/* MARK: - Functions */

static PyObject *dtype_names(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return stcpy_dtype_names_dict();
}

static PyObject *dtype_info(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *list = PyList_New(STC_DTYPE_COUNT);
    if (!list) return NULL;
    for (int i = 0; i < STC_DTYPE_COUNT; i++) {
        PyObject *item = Py_BuildValue("(sI)", stc_dtype_name((stc_dtype)i),
                                       stc_dtype_bits((stc_dtype)i));
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyMethodDef core_functions[] = {
    {"open", (PyCFunction)(void (*)(void))stcpy_open_path, METH_VARARGS | METH_KEYWORDS,
     "open(filename, backend='mmap', max_header_size=0)\n--\n\n"
     "Opens and fully validates a file; returns its owner object."},
    {"open_buffer", (PyCFunction)(void (*)(void))stcpy_open_buffer, METH_VARARGS | METH_KEYWORDS,
     "open_buffer(data, max_header_size=0)\n--\n\n"
     "Validates a whole file image held in a bytes-like object, without copying it."},
    {"open_fd", (PyCFunction)(void (*)(void))stcpy_open_fd, METH_VARARGS | METH_KEYWORDS,
     "open_fd(fd, backend='mmap', max_header_size=0, name=None)\n--\n\n"
     "Opens and fully validates the regular file behind a descriptor (duplicated)."},
    {"header_length", (PyCFunction)(void (*)(void))stcpy_header_length,
     METH_VARARGS | METH_KEYWORDS,
     "header_length(head, file_size, max_header_size=0, name=None)\n--\n\n"
     "Checks a file's first bytes and returns its header length N."},
    {"open_header", (PyCFunction)(void (*)(void))stcpy_open_header, METH_VARARGS | METH_KEYWORDS,
     "open_header(head, file_size, max_header_size=0, name=None)\n--\n\n"
     "Validates a header (the file's first 8 + N bytes) for a file of file_size bytes; "
     "the result holds no tensor data."},
    {"close_names", stcpy_close_names, METH_VARARGS,
     "close_names(name, candidates, /)\n--\n\nUp to 3 of candidates (str) closest to name "
     "by edit distance, for a \"did you mean\" message; [] when none is close."},
    {"save", stcpy_save_tensors, METH_VARARGS,
     "save(names, codes, shapes, arrays, metadata, path)\n--\n\n"
     "Writes a file atomically (path) or returns its bytes (path None)."},
    {"dtypes", dtype_info, METH_NOARGS,
     "dtypes()\n--\n\n(code, bits) of every dtype of the format, in writer rank order."},
    {"stats", (PyCFunction)(void (*)(void))stcpy_tensor_stats, METH_VARARGS | METH_KEYWORDS,
     "stats(code, data, threads=0)\n--\n\n"
     "(count, nan, inf, zeros, finite, min, max, mean, m2) of the values in the bytes of data, "
     "computed in parallel without the GIL."},
    {"stats_merge", stcpy_tensor_stats_merge, METH_VARARGS,
     "stats_merge(a, b)\n--\n\nThe statistics tuple of a's values and b's together."},
    {"histogram", (PyCFunction)(void (*)(void))stcpy_tensor_histogram, METH_VARARGS | METH_KEYWORDS,
     "histogram(code, data, lo, hi, bins, threads=0)\n--\n\n"
     "Counts of the finite values in [lo, hi], in bins of equal width."},
    {"dtype_names", dtype_names, METH_NOARGS,
     "dtype_names()\n--\n\n{code: name} of the element type of every dtype that has a "
     "framework-neutral name (as NumPy, ml_dtypes, torch, JAX and TensorFlow spell it)."},
    {NULL, NULL, 0, NULL},
};

/* MARK: - Module lifecycle */

static int core_exec(PyObject *module) {
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    module_state *st = stcpy_state_of_module(module);
    st->safetensor_error = PyErr_NewExceptionWithDoc(
        "safetensors_c.SafetensorError",
        "Raised for every invalid or unsupported safetensors file (a ValueError).",
        PyExc_ValueError, NULL);
    if (!st->safetensor_error) return -1;
    if (PyModule_AddObjectRef(module, "SafetensorError", st->safetensor_error) < 0) return -1;
    st->file_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &stcpy_file_type_spec, NULL);
    if (!st->file_type) return -1;
    if (PyModule_AddObjectRef(module, "_File", (PyObject *)st->file_type) < 0) return -1;
    st->packed_type = (PyTypeObject *)stcpy_make_packed_type();
    if (!st->packed_type) return -1;
    if (PyModule_AddObjectRef(module, "PackedArray", (PyObject *)st->packed_type) < 0) return -1;
    if (PyModule_AddStringConstant(module, "core_version", STC_VERSION_STRING) < 0) return -1;
    if (PyModule_AddIntConstant(module, "DEFAULT_MAX_HEADER_SIZE",
                                STC_DEFAULT_MAX_HEADER_SIZE) < 0)
        return -1;
    return 0;
}

static int core_traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = stcpy_state_of_module(module);
    Py_VISIT(st->safetensor_error);
    Py_VISIT(st->file_type);
    Py_VISIT(st->packed_type);
    for (int i = 0; i < STC_DTYPE_COUNT; i++) Py_VISIT(st->descrs[i]);
    return 0;
}

static int core_clear(PyObject *module) {
    module_state *st = stcpy_state_of_module(module);
    Py_CLEAR(st->safetensor_error);
    Py_CLEAR(st->file_type);
    Py_CLEAR(st->packed_type);
    for (int i = 0; i < STC_DTYPE_COUNT; i++) Py_CLEAR(st->descrs[i]);
    return 0;
}

static void core_free(void *module) { core_clear((PyObject *)module); }

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "safetensors_c._core",
    .m_doc = "The C core of safetensors_c: validation, zero-copy loading and writing.",
    .m_size = sizeof(module_state),
    .m_methods = core_functions,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void);

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
