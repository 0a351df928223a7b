/*
 * binding.h - shared declarations of the CPython/NumPy binding.
 *
 * The binding is the only C that sees Python.h and the NumPy headers. It is
 * thin on purpose: the core does the work, this layer turns core results
 * into Python objects and core errors into exceptions.
 */
#ifndef STC_BINDING_H
#define STC_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>

#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL stc_numpy_api
#ifndef STC_BINDING_IMPORTS_NUMPY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../core/stc.h"

/* MARK: - Module state */

typedef struct module_state {
    PyObject *safetensor_error; /* SafetensorError, a ValueError */
    PyTypeObject *file_type;    /* _File: the owner of one opened file */
    /* NumPy dtypes by stc_dtype; NULL until first needed (see array.c). */
    PyArray_Descr *descrs[STC_DTYPE_COUNT];
    /* PackedArray: the ndarray subclass of packed F4/F6 bytes (array.c). */
    PyTypeObject *packed_type;
} module_state;

module_state *stcpy_state_of_module(PyObject *module);
module_state *stcpy_state_of_type(PyTypeObject *type);

/* MARK: - The _File owner type (file_object.c) */

/* One opened file. Arrays handed out use it as their base, so the mapping
 * lives exactly as long as the last array or handle that needs it.
 *
 * Arrays of one handle never alias each other: the first access of a tensor
 * is a view into the shared, writable (private copy-on-write) mapping;
 * every later one comes fresh from the file (see array.c). handed_out has
 * one bit per tensor, in header order (stc_tensor_index), set when the
 * view was given out. It is NULL when views cannot alias a caller's writes
 * and every access may be a view: memory images (the caller's own buffer,
 * zero-copy by contract), read-only mappings, the pread backend. */
typedef struct file_object {
    PyObject_HEAD
    stc_file *file;
    Py_buffer image;     /* for files opened from memory */
    int has_image;
    PyObject *filename;  /* str or NULL, for messages */
    unsigned char *handed_out;
} file_object;

extern PyType_Spec stcpy_file_type_spec;

/* open(filename, backend="mmap", max_header_size=0) -> _File */
PyObject *stcpy_open_path(PyObject *module, PyObject *args, PyObject *kwargs);
/* open_buffer(data, max_header_size=0) -> _File (zero-copy over data) */
PyObject *stcpy_open_buffer(PyObject *module, PyObject *args, PyObject *kwargs);

/* open_fd(fd, backend="mmap", max_header_size=0, name=None): a file opened
 * from a descriptor, which the core duplicates. */
PyObject *stcpy_open_fd(PyObject *module, PyObject *args, PyObject *kwargs);

/* Whether tensor t's view into the shared mapping was given out already
 * (0 when the handle does not track: see file_object). */
int stcpy_was_handed_out(const file_object *f, const stc_tensor *t);

/* Marks t as handed out; returns 1 when this call is its first access (the
 * caller may give out a view into the shared mapping), 0 when an earlier
 * call was (the caller must read t afresh). Always 1 for handles that do
 * not track. Call with the GIL held: the test and the set are one step
 * under it, so two threads never both get the first access. */
int stcpy_hand_out(file_object *f, const stc_tensor *t);

/* header_length(head, file_size, max_header_size=0, name=None) -> N, and
 * open_header(head, file_size, ...) -> a _File that knows every tensor but
 * holds no data: for sources the Python layer reads itself. */
PyObject *stcpy_header_length(PyObject *module, PyObject *args, PyObject *kwargs);
PyObject *stcpy_open_header(PyObject *module, PyObject *args, PyObject *kwargs);
/* close_names(name, candidates): the (up to 3) candidates closest to name. */
PyObject *stcpy_close_names(PyObject *module, PyObject *args);

/* MARK: - Arrays (array.c) */

/* The one array factory: a NumPy array for tensor t of file `owner`.
 * A view into the mapping for the first access of a tensor of a mapped file
 * (it marks t handed out) and for images; on a later access, fresh from the
 * file: a private mapping of its own pages for large tensors, a pread into
 * memory of its own for small ones. A fresh array filled by pread for the
 * pread backend. New reference, or NULL with an exception set. */
PyObject *stcpy_tensor_to_array(module_state *st, file_object *owner, const stc_tensor *t);

/* The same without handing t out, for checks that only read (digests): a
 * read-only view while t was never handed out (its pages are still the
 * file's), else what tensor_to_array gives. */
PyObject *stcpy_tensor_to_peek_array(module_state *st, file_object *owner, const stc_tensor *t);

/* Every tensor as a dict, in data order, by the rules of tensor_to_array;
 * the tensors already handed out share one fresh mapping of the span they
 * cover (one mapping per call, whatever the number of tensors). */
PyObject *stcpy_tensors_to_dict(module_state *st, file_object *owner);

/* Fills dims with the NumPy shape of t (packed sub-byte dtypes become
 * uint8 bytes; see array.c) and returns ndim, or -1 with an exception. */
int stcpy_numpy_shape(module_state *st, const stc_tensor *t, npy_intp *dims);

/* A tuple of Python ints from n dimensions (new reference, or NULL). */
PyObject *stcpy_dims_tuple(const uint64_t *dims, size_t n);

/* The NumPy dtype for a format dtype (borrowed reference), or NULL with an
 * exception set. Resolved by the binding itself (ml_dtypes imported at the
 * first BF16 or F8 tensor): _core needs nothing from the package. */
PyArray_Descr *stcpy_descr_for(module_state *st, stc_dtype dtype);

/* {code: framework-neutral type name} for every dtype that has one: the
 * one table of names (_dtypes.DTYPE_NAMES). New reference, or NULL. */
PyObject *stcpy_dtype_names_dict(void);

/* A new PackedArray type (an ndarray subclass: format_dtype,
 * logical_shape), for the module state. New reference, or NULL. */
PyObject *stcpy_make_packed_type(void);

/* Gathers a strided view of tensor t into a new C-ordered array (for
 * slicing without a mapping). */
PyObject *stcpy_read_view_to_array(module_state *st, file_object *owner, const stc_tensor *t,
                             uint64_t offset, PyObject *shape, PyObject *strides);

/* MARK: - Errors (errors.c) */

/* Raises the Python exception for a core error and returns NULL. filename
 * may be NULL. */
PyObject *stcpy_raise_core_error(module_state *st, const stc_error *error, PyObject *filename);

/* "path: " to start a message: the path as it is when every character is
 * printable, else its repr(), so that a file name cannot carry control
 * characters into a message; "" for NULL. New reference, or NULL on error. */
PyObject *stcpy_path_prefix(PyObject *filename);

/* Raises SafetensorError with a PyUnicode_FromFormat message and the stable
 * `code` attribute (e.g. "STC_ERR_NO_SUCH_TENSOR"); returns NULL. */
PyObject *stcpy_raise_coded(module_state *st, const char *code, const char *format, ...);

/* MARK: - Writing (writer.c) */

/* save(names, codes, shapes, arrays, metadata, path) -> bytes or None */
PyObject *stcpy_save_tensors(PyObject *module, PyObject *args);

/* MARK: - Tensor statistics (stats.c) */

/* stats(code, data, threads=0) -> (count, nan, inf, zeros, finite, min, max,
 * mean, m2) of the values in the bytes-like data of dtype code, computed by
 * the core without the GIL (see stc_stats_compute). */
PyObject *stcpy_tensor_stats(PyObject *module, PyObject *args, PyObject *kwargs);

/* stats_merge(a, b) -> the tuple for a's values and b's together. */
PyObject *stcpy_tensor_stats_merge(PyObject *module, PyObject *args);

/* histogram(code, data, lo, hi, bins, threads=0) -> list of bins counts of
 * the finite values in [lo, hi] (see stc_stats_histogram). */
PyObject *stcpy_tensor_histogram(PyObject *module, PyObject *args, PyObject *kwargs);

#endif /* STC_BINDING_H */
