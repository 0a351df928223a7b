/*
 * array.c - the one array factory: format tensors as NumPy arrays.
 */
#include "binding.h"

#include <errno.h>
#include <string.h>

/* MARK: - Dtypes */

/* The framework-neutral name of each dtype's element type, as NumPy,
 * ml_dtypes, torch, JAX and TensorFlow spell it (F4: one value a byte); the
 * package's _dtypes.DTYPE_NAMES is this table (dtype_names()). The F6 types
 * have no name anywhere. from_ml: the NumPy dtype comes from ml_dtypes. */
static const struct {
    const char *name;
    bool from_ml;
} dtype_names[STC_DTYPE_COUNT] = {
    [STC_BOOL] = {"bool", false},
    [STC_F4] = {"float4_e2m1fn", false},
    [STC_F6_E2M3] = {NULL, false},
    [STC_F6_E3M2] = {NULL, false},
    [STC_U8] = {"uint8", false},
    [STC_I8] = {"int8", false},
    [STC_F8_E5M2] = {"float8_e5m2", true},
    [STC_F8_E4M3] = {"float8_e4m3fn", true},
    [STC_F8_E8M0] = {"float8_e8m0fnu", true},
    [STC_F8_E4M3FNUZ] = {"float8_e4m3fnuz", true},
    [STC_F8_E5M2FNUZ] = {"float8_e5m2fnuz", true},
    [STC_I16] = {"int16", false},
    [STC_U16] = {"uint16", false},
    [STC_F16] = {"float16", false},
    [STC_BF16] = {"bfloat16", true},
    [STC_I32] = {"int32", false},
    [STC_U32] = {"uint32", false},
    [STC_F32] = {"float32", false},
    [STC_C64] = {"complex64", false},
    [STC_F64] = {"float64", false},
    [STC_I64] = {"int64", false},
    [STC_U64] = {"uint64", false},
};

static bool is_packed(stc_dtype dtype) { return stc_dtype_bits(dtype) % 8 != 0; }

PyObject *stcpy_dtype_names_dict(void) {
    PyObject *dict = PyDict_New();
    for (int i = 0; dict && i < STC_DTYPE_COUNT; i++) {
        if (!dtype_names[i].name) continue;
        PyObject *name = PyUnicode_FromString(dtype_names[i].name);
        if (!name || PyDict_SetItemString(dict, stc_dtype_name((stc_dtype)i), name) < 0)
            Py_CLEAR(dict);
        Py_XDECREF(name);
    }
    return dict;
}

/* The NumPy dtype an element type loads as: uint8 bytes for the packed
 * ones, ml_dtypes' types (imported at their first use) for BF16 and F8,
 * NumPy's own for the rest. A new reference, or NULL with an exception. */
static PyArray_Descr *resolve_descr(stc_dtype dtype) {
    PyArray_Descr *descr = NULL;
    if (is_packed(dtype)) return PyArray_DescrFromType(NPY_UINT8);
    PyObject *spec;
    if (dtype_names[dtype].from_ml) {
        PyObject *ml = PyImport_ImportModule("ml_dtypes");
        if (!ml) {
            if (PyErr_ExceptionMatches(PyExc_ImportError)) {
                PyErr_SetString(PyExc_ImportError, "BF16 and F8 tensors need the ml_dtypes "
                                                   "package: pip install ml_dtypes");
            }
            return NULL;
        }
        spec = PyObject_GetAttrString(ml, dtype_names[dtype].name);
        Py_DECREF(ml);
    } else {
        spec = PyUnicode_FromString(dtype_names[dtype].name);
    }
    if (!spec) return NULL;
    int ok = PyArray_DescrConverter(spec, &descr);
    Py_DECREF(spec);
    return ok ? descr : NULL;
}

PyArray_Descr *stcpy_descr_for(module_state *st, stc_dtype dtype) {
    if (!st->descrs[dtype]) st->descrs[dtype] = resolve_descr(dtype);
    return st->descrs[dtype];
}

/* MARK: - PackedArray */

/* The rule every packed dtype follows: values fill whole groups of bytes,
 * lcm(bits, 8) bits each (F4: 2 values in 1 byte; F6: 4 values in 3). */
static void packed_group(unsigned bits, uint64_t *values, uint64_t *bytes) {
    unsigned a = bits, b = 8;
    while (b) {
        unsigned r = a % b;
        a = b;
        b = r;
    }
    *values = 8 / a;
    *bytes = bits / a;
}

static int packed_bits_of(PyObject *code) {
    if (!PyUnicode_Check(code)) return 0;
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(code, &len);
    stc_dtype dtype;
    if (!text || !stc_dtype_from_name(text, (size_t)len, &dtype) || !is_packed(dtype)) {
        PyErr_Clear();
        return 0;
    }
    return (int)stc_dtype_bits(dtype);
}

/* *out = obj.name, or NULL when obj has no such attribute. 0, or -1 with
 * an exception. */
static int optional_attr(PyObject *obj, const char *name, PyObject **out) {
    *out = PyObject_GetAttrString(obj, name);
    if (*out) return 0;
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
    PyErr_Clear();
    return 0;
}

/* __array_finalize__: a new view keeps its source's format dtype, and its
 * logical shape only while the shape in bytes is the same. */
static PyObject *packed_finalize(PyObject *self, PyObject *obj) {
    PyObject *code = NULL, *stored = NULL, *obj_shape = NULL, *self_shape = NULL;
    PyObject *result = NULL;
    if (optional_attr(obj, "format_dtype", &code) < 0 ||
        optional_attr(obj, "_stored_shape", &stored) < 0)
        goto done;
    if (stored && stored != Py_None) {
        if (optional_attr(obj, "shape", &obj_shape) < 0) goto done;
        self_shape = PyObject_GetAttrString(self, "shape");
        if (!self_shape) goto done;
        int same = obj_shape ? PyObject_RichCompareBool(obj_shape, self_shape, Py_EQ) : 0;
        if (same < 0) goto done;
        if (!same) Py_SETREF(stored, Py_NewRef(Py_None));
    }
    if (PyObject_SetAttrString(self, "format_dtype", code ? code : Py_None) < 0 ||
        PyObject_SetAttrString(self, "_stored_shape", stored ? stored : Py_None) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(code);
    Py_XDECREF(stored);
    Py_XDECREF(obj_shape);
    Py_XDECREF(self_shape);
    return result;
}

/* logical_shape: the stored one, else the shape in bytes with its last
 * dimension counted in values. */
static PyObject *packed_logical_shape(PyObject *self, void *unused) {
    (void)unused;
    PyObject *stored = PyObject_GetAttrString(self, "_stored_shape");
    if (!stored || stored != Py_None) return stored;
    Py_DECREF(stored);
    PyObject *code = PyObject_GetAttrString(self, "format_dtype");
    if (!code) return NULL;
    int bits = packed_bits_of(code);
    PyArrayObject *array = (PyArrayObject *)self;
    int nd = PyArray_NDIM(array);
    npy_intp *dims = PyArray_DIMS(array);
    PyObject *result = NULL;
    if (!bits) {
        PyErr_SetString(PyExc_ValueError, "this PackedArray has no format dtype");
    } else if (nd == 0 || ((uint64_t)dims[nd - 1] * 8) % (unsigned)bits != 0) {
        PyObject *shape = PyObject_GetAttrString(self, "shape");
        if (shape)
            PyErr_Format(PyExc_ValueError,
                         "cannot tell the logical shape of a %U array of shape %R; use "
                         "safetensors_c.packed(raw, dtype, shape)", code, shape);
        Py_XDECREF(shape);
    } else {
        result = PyTuple_New(nd);
        for (int d = 0; result && d < nd; d++) {
            uint64_t n = (uint64_t)dims[d];
            if (d == nd - 1) n = n * 8 / (unsigned)bits;
            PyObject *v = PyLong_FromUnsignedLongLong(n);
            if (!v) Py_CLEAR(result);
            else PyTuple_SET_ITEM(result, d, v);
        }
    }
    Py_DECREF(code);
    return result;
}

static PyMethodDef packed_finalize_def = {
    "__array_finalize__", packed_finalize, METH_O, NULL};

static PyGetSetDef packed_logical_shape_def = {
    "logical_shape", packed_logical_shape, NULL,
    "The shape in values (the last dimension of the bytes counted in values).", NULL};

#define PACKED_DOC                                                                            \
    "The raw bytes (``uint8``) of a packed sub-byte tensor: F4 or F6.\n\n"                     \
    "``format_dtype`` is the format's code and ``logical_shape`` the shape in\n"              \
    "values (F4 packs two values per byte, F6 four values per three bytes).\n"                \
    "Saving a PackedArray writes it with that dtype and shape."

PyObject *stcpy_make_packed_type(void) {
    PyObject *ns = Py_BuildValue("{s:s,s:s,s:s,s:O,s:O}", "__module__", "safetensors_c",
                                 "__qualname__", "PackedArray", "__doc__", PACKED_DOC,
                                 "format_dtype", Py_None, "_stored_shape", Py_None);
    if (!ns) return NULL;
    PyObject *type = PyObject_CallFunction((PyObject *)&PyType_Type, "s(O)O", "PackedArray",
                                           (PyObject *)&PyArray_Type, ns);
    Py_DECREF(ns);
    if (!type) return NULL;
    PyObject *finalize = PyDescr_NewMethod((PyTypeObject *)type, &packed_finalize_def);
    PyObject *logical = PyDescr_NewGetSet((PyTypeObject *)type, &packed_logical_shape_def);
    if (!finalize || !logical || PyObject_SetAttrString(type, "__array_finalize__", finalize) < 0 ||
        PyObject_SetAttrString(type, "logical_shape", logical) < 0)
        Py_CLEAR(type);
    Py_XDECREF(finalize);
    Py_XDECREF(logical);
    return type;
}

/* MARK: - Shapes */

/* *out = a * b, if that is at most limit. */
static bool mul_fits(uint64_t a, uint64_t b, uint64_t limit, uint64_t *out) {
    if (b != 0 && a > limit / b) return false;
    *out = a * b;
    return true;
}

/* Raises SafetensorError (code STC_ERR_SIZE_OVERFLOW) for a valid tensor that
 * NumPy cannot represent, naming the tensor. Returns -1. */
static int beyond_numpy(module_state *st, const stc_tensor *t, const char *message) {
    stc_error error = {.status = STC_ERR_SIZE_OVERFLOW, .message = message,
                       .offset = t->header_offset};
    size_t kept = t->name_len < STC_ERROR_TENSOR_CAPACITY ? t->name_len
                                                          : STC_ERROR_TENSOR_CAPACITY;
    memcpy(error.tensor, t->name, kept);
    error.tensor_len = kept;
    error.tensor_truncated = kept < t->name_len;
    stcpy_raise_core_error(st, &error, NULL);
    return -1;
}

/* The NumPy shape of tensor t. Whole-byte dtypes keep their shape. Packed
 * sub-byte dtypes (F4, F6_*) become uint8 arrays of their raw bytes: the last
 * dimension is divided into bytes when it fills whole bytes (F4 [.., 2k]
 * -> [.., k]; F6 [.., 4k] -> [.., 3k]), otherwise the tensor is one flat
 * run of bytes. Returns the number of dimensions, or -1 with an exception. */
int stcpy_numpy_shape(module_state *st, const stc_tensor *t, npy_intp *dims) {
    if (t->ndim > NPY_MAXDIMS)
        return beyond_numpy(st, t, "more dimensions than a NumPy array can have (64)");
    uint64_t shape[NPY_MAXDIMS];
    size_t nd = t->ndim;
    for (size_t d = 0; d < nd; d++) shape[d] = t->shape[d];
    unsigned bits = stc_dtype_bits(t->dtype);
    if (is_packed(t->dtype)) {
        uint64_t group, group_bytes;
        packed_group(bits, &group, &group_bytes);
        if (nd > 0 && shape[nd - 1] % group == 0) {
            shape[nd - 1] = shape[nd - 1] / group * group_bytes;
        } else {
            nd = 1;
            shape[0] = t->nbytes;
        }
        bits = 8;
    }
    /* NumPy refuses an array whose item size times its non-zero dimensions
     * exceeds NPY_MAX_INTP, even when another dimension is zero: check the
     * same way so that the error is ours, with the tensor's name. */
    uint64_t running = bits / 8;
    for (size_t d = 0; d < nd; d++) {
        if (shape[d] > (uint64_t)NPY_MAX_INTP ||
            (shape[d] != 0 && !mul_fits(running, shape[d], (uint64_t)NPY_MAX_INTP, &running)))
            return beyond_numpy(st, t, "too large for a NumPy array (its dimensions overflow "
                                       "NumPy's index type)");
        dims[d] = (npy_intp)shape[d];
    }
    return (int)nd;
}

PyObject *stcpy_dims_tuple(const uint64_t *dims, size_t n) {
    PyObject *tuple = PyTuple_New((Py_ssize_t)n);
    if (!tuple) return NULL;
    for (size_t d = 0; d < n; d++) {
        PyObject *v = PyLong_FromUnsignedLongLong(dims[d]);
        if (!v) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, (Py_ssize_t)d, v);
    }
    return tuple;
}

/* Packed arrays become PackedArray views, marked with their format dtype
 * and logical shape so that saving them restores both. */
static PyObject *wrap_if_packed(module_state *st, PyObject *array, const stc_tensor *t) {
    if (!array || !is_packed(t->dtype)) return array;
    PyObject *wrapped = PyArray_View((PyArrayObject *)array, NULL, st->packed_type);
    Py_DECREF(array);
    if (!wrapped) return NULL;
    PyObject *code = PyUnicode_FromString(stc_dtype_name(t->dtype));
    PyObject *shape = code ? stcpy_dims_tuple(t->shape, t->ndim) : NULL;
    if (!shape || PyObject_SetAttrString(wrapped, "format_dtype", code) < 0 ||
        PyObject_SetAttrString(wrapped, "_stored_shape", shape) < 0)
        Py_CLEAR(wrapped);
    Py_XDECREF(code);
    Py_XDECREF(shape);
    return wrapped;
}

/* MARK: - The factory */

/* Tensors of at least this many bytes that are asked for again get a
 * private mapping of their own pages (no copy, one mapping each, released
 * with the array); smaller ones are read with pread into memory of their
 * own, so that repeated accesses of many small tensors never use up the
 * process's mappings (vm.max_map_count). */
#define FRESH_MAPPING_MIN_BYTES ((uint64_t)1 << 20)

#define REGION_CAPSULE "safetensors_c._core.region"

/* An array over `data`, which `base` keeps alive. Steals the reference to
 * base, even on failure. */
static PyObject *view_over(PyArray_Descr *descr, int nd, npy_intp *dims, uint8_t *data,
                           int writable, PyObject *base) {
    int flags = NPY_ARRAY_C_CONTIGUOUS | (writable ? NPY_ARRAY_WRITEABLE : 0);
    Py_INCREF(descr);
    PyObject *array = PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, NULL, data, flags,
                                           NULL);
    if (!array) {
        Py_DECREF(base);
        return NULL;
    }
    /* SetBaseObject steals the reference to base even when it fails. */
    if (PyArray_SetBaseObject((PyArrayObject *)array, base) < 0) {
        Py_DECREF(array);
        return NULL;
    }
    return array;
}

typedef stc_status (*read_fn)(const stc_file *, uint64_t, size_t, void *, stc_error *);

/* A new array of its own, filled by `read` (stc_read, or stc_read_file to
 * bypass the mapping). */
static PyObject *read_array(module_state *st, file_object *owner, const stc_tensor *t,
                            PyArray_Descr *descr, int nd, npy_intp *dims, read_fn read) {
    Py_INCREF(descr);
    PyObject *array = PyArray_NewFromDescr(&PyArray_Type, descr, nd, dims, NULL, NULL, 0, NULL);
    if (!array) return NULL;
    stc_error error;
    stc_status status;
    void *dst = PyArray_DATA((PyArrayObject *)array);
    /* Without the GIL: pread into memory no other thread can see yet,
     * from a file the caller's reference to owner keeps open. */
    Py_BEGIN_ALLOW_THREADS
    status = read(owner->file, t->begin, (size_t)t->nbytes, dst, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        Py_DECREF(array);
        return stcpy_raise_core_error(st, &error, owner->filename);
    }
    return array;
}

static void release_region(PyObject *capsule) {
    stc_region *region = PyCapsule_GetPointer(capsule, REGION_CAPSULE);
    stc_unmap_range(region);
    PyMem_Free(region);
}

static uint8_t *region_data(PyObject *capsule) {
    return ((stc_region *)PyCapsule_GetPointer(capsule, REGION_CAPSULE))->data;
}

/* A capsule that owns a fresh private mapping of [offset, offset + len) of
 * the data section and unmaps it when the last array over it goes; Py_None
 * when the system has no mapping to spare (ENOMEM), for the caller to read
 * the bytes instead; NULL with an exception on any other failure. */
static PyObject *map_region(module_state *st, file_object *owner, uint64_t offset,
                            uint64_t len) {
    stc_region *region = PyMem_Calloc(1, sizeof *region);
    if (!region) return PyErr_NoMemory();
    stc_error error;
    stc_status status;
    /* Without the GIL: mmap into a struct no other thread can see yet, of a
     * file the caller's reference to owner keeps open. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_map_range(owner->file, offset, len, region, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        PyMem_Free(region);
        if (status == STC_ERR_IO && error.sys_errno == ENOMEM) Py_RETURN_NONE;
        return stcpy_raise_core_error(st, &error, owner->filename);
    }
    PyObject *capsule = PyCapsule_New(region, REGION_CAPSULE, release_region);
    if (!capsule) {
        stc_unmap_range(region);
        PyMem_Free(region);
    }
    return capsule;
}

/* One fresh mapping shared by the repeated tensors of one tensors_to_dict
 * call: it covers [lo, hi) of the data section; capsule is NULL when it
 * could not be made (then those tensors are read with pread). */
typedef struct shared_region {
    PyObject *capsule;
    uint64_t lo, hi;
    uint8_t *data;
} shared_region;

/* Tensor t asked for again: never from the shared mapping, whose pages may
 * hold the caller's writes into the first array, but fresh from the file. */
static PyObject *fresh_array(module_state *st, file_object *owner, const stc_tensor *t,
                             PyArray_Descr *descr, int nd, npy_intp *dims,
                             const shared_region *shared) {
    if (shared && shared->capsule && t->nbytes > 0 && t->begin >= shared->lo &&
        t->end <= shared->hi)
        return view_over(descr, nd, dims, shared->data + (t->begin - shared->lo), 1,
                         Py_NewRef(shared->capsule));
    if (!shared && t->nbytes >= FRESH_MAPPING_MIN_BYTES) {
        PyObject *capsule = map_region(st, owner, t->begin, t->nbytes);
        if (!capsule) return NULL;
        if (capsule != Py_None) return view_over(descr, nd, dims, region_data(capsule), 1, capsule);
        Py_DECREF(capsule);
    }
    return read_array(st, owner, t, descr, nd, dims, stc_read_file);
}

typedef enum array_use { USE_HAND_OUT, USE_PEEK } array_use;

static PyObject *array_for(module_state *st, file_object *owner, const stc_tensor *t,
                           array_use use, const shared_region *shared) {
    npy_intp dims[NPY_MAXDIMS];
    int nd = stcpy_numpy_shape(st, t, dims);
    if (nd < 0) return NULL;
    PyArray_Descr *descr = stcpy_descr_for(st, t->dtype);
    if (!descr) return NULL;
    uint8_t *data = stc_data(owner->file);
    PyObject *array;
    if (!data) {
        array = read_array(st, owner, t, descr, nd, dims, stc_read);
    } else if (use == USE_PEEK ? !stcpy_was_handed_out(owner, t) : stcpy_hand_out(owner, t)) {
        /* Zero-copy: a view into the mapping (or image), kept alive by its
         * base, the owner. A peek is read-only: it is never handed out. */
        int writable = use == USE_HAND_OUT && stc_data_writable(owner->file);
        array = view_over(descr, nd, dims, data + t->begin, writable,
                          Py_NewRef((PyObject *)owner));
    } else {
        array = fresh_array(st, owner, t, descr, nd, dims, shared);
    }
    return wrap_if_packed(st, array, t);
}

PyObject *stcpy_tensor_to_array(module_state *st, file_object *owner, const stc_tensor *t) {
    return array_for(st, owner, t, USE_HAND_OUT, NULL);
}

PyObject *stcpy_tensor_to_peek_array(module_state *st, file_object *owner, const stc_tensor *t) {
    return array_for(st, owner, t, USE_PEEK, NULL);
}

PyObject *stcpy_tensors_to_dict(module_state *st, file_object *owner) {
    size_t n = stc_tensor_count(owner->file);
    shared_region shared = {NULL, UINT64_MAX, 0, NULL};
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_offset_order(owner->file, i);
        if (t->nbytes == 0 || !stcpy_was_handed_out(owner, t)) continue;
        if (t->begin < shared.lo) shared.lo = t->begin;
        if (t->end > shared.hi) shared.hi = t->end;
    }
    if (shared.lo < shared.hi) {
        PyObject *capsule = map_region(st, owner, shared.lo, shared.hi - shared.lo);
        if (!capsule) return NULL;
        if (capsule == Py_None) {
            Py_DECREF(capsule);
        } else {
            shared.capsule = capsule;
            shared.data = region_data(capsule);
        }
    }
    PyObject *dict = PyDict_New();
    if (!dict) goto fail;
    for (size_t i = 0; i < n; i++) {
        const stc_tensor *t = stc_tensor_by_offset_order(owner->file, i);
        PyObject *name = PyUnicode_DecodeUTF8(t->name, (Py_ssize_t)t->name_len, NULL);
        PyObject *array = name ? array_for(st, owner, t, USE_HAND_OUT, &shared) : NULL;
        if (!array || PyDict_SetItem(dict, name, array) < 0) {
            Py_XDECREF(name);
            Py_XDECREF(array);
            goto fail;
        }
        Py_DECREF(name);
        Py_DECREF(array);
    }
    Py_XDECREF(shared.capsule);
    return dict;
fail:
    Py_XDECREF(dict);
    Py_XDECREF(shared.capsule);
    return NULL;
}

/* MARK: - Strided reads */

static int read_u64_tuple(PyObject *seq, uint64_t *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(seq, i));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

static int read_i64_tuple(PyObject *seq, int64_t *out, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(seq, i));
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

PyObject *stcpy_read_view_to_array(module_state *st, file_object *owner, const stc_tensor *t,
                             uint64_t offset, PyObject *shape, PyObject *strides) {
    if (!PyTuple_Check(shape) || !PyTuple_Check(strides) ||
        PyTuple_GET_SIZE(shape) != PyTuple_GET_SIZE(strides) ||
        PyTuple_GET_SIZE(shape) > NPY_MAXDIMS) {
        PyErr_SetString(PyExc_ValueError, "shape and strides must be tuples of equal length");
        return NULL;
    }
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    uint64_t ushape[NPY_MAXDIMS];
    int64_t ustrides[NPY_MAXDIMS];
    npy_intp dims[NPY_MAXDIMS];
    if (read_u64_tuple(shape, ushape, nd) < 0 || read_i64_tuple(strides, ustrides, nd) < 0)
        return NULL;
    for (Py_ssize_t d = 0; d < nd; d++) {
        if (ushape[d] > (uint64_t)NPY_MAX_INTP) {
            PyErr_SetString(PyExc_ValueError, "dimension too large");
            return NULL;
        }
        dims[d] = (npy_intp)ushape[d];
    }
    PyArray_Descr *descr = stcpy_descr_for(st, t->dtype);
    if (!descr) return NULL;
    Py_INCREF(descr);
    PyObject *array = PyArray_NewFromDescr(&PyArray_Type, descr, (int)nd, dims, NULL, NULL, 0,
                                           NULL);
    if (!array) return NULL;
    size_t itemsize = (size_t)PyArray_ITEMSIZE((PyArrayObject *)array);
    void *dst = PyArray_DATA((PyArrayObject *)array);
    stc_error error;
    stc_status status;
    if (offset > t->nbytes) {
        Py_DECREF(array);
        PyErr_SetString(PyExc_ValueError, "offset outside the tensor");
        return NULL;
    }
    /* Without the GIL: reads into an array no other thread can see yet. */
    Py_BEGIN_ALLOW_THREADS
    status = stc_read_tensor_strided(owner->file, t, offset, (size_t)nd, ushape, ustrides,
                                     itemsize, dst, &error);
    Py_END_ALLOW_THREADS
    if (status != STC_OK) {
        Py_DECREF(array);
        return stcpy_raise_core_error(st, &error, owner->filename);
    }
    return array;
}
