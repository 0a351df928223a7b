/*
 * errors.c - the one place where core errors become Python exceptions.
 *
 * System errors keep their errno, so that a missing file is a
 * FileNotFoundError and a protected one a PermissionError. Everything about
 * the file's contents is a SafetensorError whose message says what is
 * wrong, for which tensor, and where.
 *
 * Messages get printed to terminals as they are, so none may carry a control
 * character from the file: tensor names (chosen by whoever wrote the file)
 * are always quoted with %R, and a path is quoted the same way when it holds
 * a character repr() would escape (ESC, CR, C1 and bidi controls, ...).
 */
#include "binding.h"

#include <errno.h>
#include <stdarg.h>

PyObject *stcpy_raise_coded(module_state *st, const char *code, const char *format, ...) {
    va_list args;
    va_start(args, format);
    PyObject *message = PyUnicode_FromFormatV(format, args);
    va_end(args);
    if (!message) return NULL;
    PyObject *exc = PyObject_CallOneArg(st->safetensor_error, message);
    Py_DECREF(message);
    if (!exc) return NULL;
    PyObject *code_obj = PyUnicode_FromString(code);
    if (!code_obj || PyObject_SetAttrString(exc, "code", code_obj) < 0) {
        Py_XDECREF(code_obj);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(code_obj);
    PyErr_SetObject(st->safetensor_error, exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *stcpy_path_prefix(PyObject *filename) {
    if (!filename) return PyUnicode_FromString("");
    if (!PyUnicode_Check(filename)) return PyUnicode_FromFormat("%R: ", filename);
    int kind = PyUnicode_KIND(filename);
    const void *data = PyUnicode_DATA(filename);
    Py_ssize_t length = PyUnicode_GET_LENGTH(filename);
    for (Py_ssize_t i = 0; i < length; i++) {
        if (!Py_UNICODE_ISPRINTABLE(PyUnicode_READ(kind, data, i)))
            return PyUnicode_FromFormat("%R: ", filename);
    }
    return PyUnicode_FromFormat("%U: ", filename);
}

PyObject *stcpy_raise_core_error(module_state *st, const stc_error *error, PyObject *filename) {
    switch (error->status) {
    case STC_ERR_NO_MEMORY:
        return PyErr_NoMemory();
    case STC_ERR_IO: {
        PyObject *exc_args = filename
            ? Py_BuildValue("(isO)", error->sys_errno, strerror(error->sys_errno), filename)
            : Py_BuildValue("(is)", error->sys_errno, strerror(error->sys_errno));
        if (!exc_args) return NULL;
        /* OSError's constructor picks the subclass (FileNotFoundError, ...)
         * from the errno. */
        PyObject *exc = PyObject_Call(PyExc_OSError, exc_args, NULL);
        Py_DECREF(exc_args);
        if (!exc) return NULL;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return NULL;
    }
    default:
        break;
    }
    PyObject *where = stcpy_path_prefix(filename);
    if (!where) return NULL;
    PyObject *tensor = NULL;
    if (error->tensor_len) {
        PyObject *name =
            PyUnicode_DecodeUTF8(error->tensor, (Py_ssize_t)error->tensor_len, "replace");
        if (!name) {
            Py_DECREF(where);
            return NULL;
        }
        tensor = PyUnicode_FromFormat("%s %R%s: ", error->tensor_is_key ? "key" : "tensor",
                                      name, error->tensor_truncated ? " (name shortened)" : "");
        Py_DECREF(name);
    } else {
        tensor = PyUnicode_FromString("");
    }
    if (!tensor) {
        Py_DECREF(where);
        return NULL;
    }
    /* Offsets below 8 are the length prefix itself: not worth printing. */
    /* The two byte counts a size mismatch compared. */
    char counts[96] = "";
    if (error->status == STC_ERR_SIZE_MISMATCH)
        PyOS_snprintf(counts, sizeof counts, ": they hold %llu bytes, but the dtype and shape "
                      "need %llu", (unsigned long long)error->size_found,
                      (unsigned long long)error->size_expected);
    PyObject *message;
    if (error->offset != STC_NO_OFFSET && error->offset >= 8)
        message = PyUnicode_FromFormat("%U%U%s%s (at byte %llu of the file)", where, tensor,
                                       error->message, counts,
                                       (unsigned long long)error->offset);
    else
        message = PyUnicode_FromFormat("%U%U%s%s", where, tensor, error->message, counts);
    if (message && error->status != STC_ERR_SIZE_MISMATCH &&
        (error->size_expected || error->size_found)) {
        PyObject *longer = PyUnicode_FromFormat(
            "%U; the header describes a file of %s%llu bytes, but it has %llu", message,
            error->status == STC_ERR_HEADER_LENGTH ? "at least " : "",
            (unsigned long long)error->size_expected, (unsigned long long)error->size_found);
        Py_SETREF(message, longer);
    }
    Py_DECREF(where);
    Py_DECREF(tensor);
    if (!message) return NULL;
    PyObject *exc = PyObject_CallOneArg(st->safetensor_error, message);
    Py_DECREF(message);
    if (!exc) return NULL;
    /* A stable, machine-readable code next to the human message. */
    PyObject *code = PyUnicode_FromString(stc_status_name(error->status));
    if (!code || PyObject_SetAttrString(exc, "code", code) < 0) {
        Py_XDECREF(code);
        Py_DECREF(exc);
        return NULL;
    }
    Py_DECREF(code);
    PyErr_SetObject(st->safetensor_error, exc);
    Py_DECREF(exc);
    return NULL;
}
