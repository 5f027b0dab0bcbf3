/* The shape checks of `consumer.events` in native code: nesting depth and duplicate keys.
 *
 * orjson parses a value into Python objects but keeps the last of duplicate keys and allows
 * nesting far deeper than our limit. Both are found here without a second encoding:
 *
 *   structure(value, max_depth)  the number of keys the JSON text spells (colons outside
 *                                strings), or -1 when containers nest deeper than max_depth;
 *   keys(document)               the number of keys the parsed document kept.
 *
 * A text orjson accepted repeats a key exactly when the first count exceeds the second. Only
 * called on text that orjson has already accepted as JSON; `consumer.events` keeps the pure
 * Python checks as the reference and as the fallback when this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
structure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "structure(value, max_depth) takes two arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    long max_depth = PyLong_AsLong(args[1]);
    if (max_depth == -1 && PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const char *at = (const char *)view.buf;
    const char *end = at + view.len;
    long depth = 0;
    Py_ssize_t keys = 0;
    while (at < end) {
        switch (*at++) {
        case '{':
        case '[':
            if (++depth > max_depth) {
                PyBuffer_Release(&view);
                return PyLong_FromLong(-1);
            }
            break;
        case '}':
        case ']':
            --depth;
            break;
        case ':':
            ++keys;
            break;
        case '"':
            /* To the closing quote: memchr finds the next quote, and a quote counts as
             * closing when an even number of backslashes precedes it. */
            for (;;) {
                const char *quote = memchr(at, '"', (size_t)(end - at));
                if (quote == NULL) {
                    at = end;
                    break;
                }
                const char *back = quote;
                while (back > at && back[-1] == '\\') {
                    --back;
                }
                at = quote + 1;
                if (((quote - back) & 1) == 0) {
                    break;
                }
            }
            break;
        default:
            break;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(keys);
}

static Py_ssize_t
count_keys(PyObject *node)
{
    Py_ssize_t total = 0;
    if (PyDict_CheckExact(node)) {
        PyObject *key, *value;
        Py_ssize_t position = 0;
        total = PyDict_GET_SIZE(node);
        while (PyDict_Next(node, &position, &key, &value)) {
            if (PyDict_CheckExact(value) || PyList_CheckExact(value)) {
                total += count_keys(value);
            }
        }
    }
    else if (PyList_CheckExact(node)) {
        Py_ssize_t size = PyList_GET_SIZE(node);
        for (Py_ssize_t i = 0; i < size; i++) {
            PyObject *item = PyList_GET_ITEM(node, i);
            if (PyDict_CheckExact(item) || PyList_CheckExact(item)) {
                total += count_keys(item);
            }
        }
    }
    return total;
}

static PyObject *
keys(PyObject *module, PyObject *document)
{
    (void)module;
    /* Called only after `structure` has bounded the depth, so the recursion is bounded. */
    return PyLong_FromSsize_t(count_keys(document));
}

static PyMethodDef methods[] = {
    {"structure", (PyCFunction)(void (*)(void))structure, METH_FASTCALL,
     "structure(value, max_depth) -> keys spelled in the JSON text, or -1 if deeper"},
    {"keys", keys, METH_O, "keys(document) -> keys kept in the parsed dicts and lists"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "consumer._jsonshape",
    .m_doc = "JSON nesting depth and key counts for consumer.events, in native code.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__jsonshape(void)
{
    return PyModule_Create(&module_definition);
}
