/* _scan.c's check of a projected JSON body: body_data(L, start, body) is the
 * data of the event body_line.body_event(L->s, start, rid, when, body)
 * makes of body_project's dict -- check_body (untrusted.py) in C, the same
 * keys in the same order, the same objects kept -- or a decline (NULL, no
 * error set), and body_event runs in Python: it stays the reference and the
 * only path for every other body.
 *
 * Why: one body per request, and for nearly all of them every check keeps
 * its member as it is (ASCII model and user, a bool, finite non-negative
 * numbers). The Python call, its slice of the whole body text (for
 * raw_len) and check_body's loop were a few per cent of a replay's CPU.
 *
 * What is reproduced: _BODY_CHECKS' fields, then n, then response_format
 * (or the Responses API's text.format), each read as absent when missing;
 * a dropped field gives input_flags ["invalid_field"] and problems
 * ["body_invalid_field"]. What declines: text holding a surrogate
 * (clean_text escapes it), a subclass of str, int, float or dict (json
 * makes none; its methods could be anyone's), an int no float holds
 * (math.isfinite raises). A body body_project declined never gets here:
 * json.loads, and body_closed, are Python's.
 * tests/test_body_check_c.py proves the data equal to body_event's. */
#ifndef VLLM_AUDIT_SCAN_BODYCHECK_H
#define VLLM_AUDIT_SCAN_BODYCHECK_H

enum { CHECK_TEXT, CHECK_BOOLEAN, CHECK_NUMBER, CHECK_INTEGER };

#define BODY_FIELDS 8
/* check_body's order: _BODY_CHECKS, then n (the one integer with minimum 1) */
static const struct {
    const char *name;
    int check, minimum;
} BODY_CHECKS[BODY_FIELDS] = {
    {"model", CHECK_TEXT, 0},           {"user", CHECK_TEXT, 0},
    {"stream", CHECK_BOOLEAN, 0},       {"temperature", CHECK_NUMBER, 0},
    {"max_completion_tokens", CHECK_INTEGER, 0}, {"max_tokens", CHECK_INTEGER, 0},
    {"max_output_tokens", CHECK_INTEGER, 0},     {"n", CHECK_INTEGER, 1},
};
static PyObject *k_body_fields[BODY_FIELDS]; /* the names, interned by PyInit__scan */
static PyObject *k_body, *k_raw_len, *k_truncated_body, *k_problems, *k_input_flags, *k_invalid_field,
    *k_body_invalid_field, *k_response_format, *k_text, *k_format, *k_type;
static PyObject *g_body_kind; /* ev.BODY; NULL: every body event is body_event's */

static int has_surrogate(PyObject *s) {
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_1BYTE_KIND) return 0;
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0, n = PyUnicode_GET_LENGTH(s); i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0xD800 && c <= 0xDFFF) return 1;
    }
    return 0;
}

/* What _Checker's check keeps of value (all borrowed): value itself, or
 * None with *bad set (dropped, as the check drops it); NULL: decline. */
static PyObject *body_checked(int check, int minimum, PyObject *value, int *bad) {
    if (value == Py_None) return Py_None;
    switch (check) {
    case CHECK_TEXT:
        if (PyUnicode_CheckExact(value)) return has_surrogate(value) ? NULL : value;
        if (PyUnicode_Check(value)) return NULL;
        break;
    case CHECK_BOOLEAN:
        if (PyBool_Check(value)) return value;
        break;
    case CHECK_NUMBER:
        if (PyBool_Check(value)) break;
        if (PyFloat_CheckExact(value)) {
            double d = PyFloat_AS_DOUBLE(value);
            if (isfinite(d) && d >= 0.0) return value;
            break;
        }
        if (PyLong_CheckExact(value)) {
            /* math.isfinite(int) converts: its OverflowError is Python's to raise */
            double d = PyLong_AsDouble(value);
            if (d == -1.0 && PyErr_Occurred()) return NULL;
            if (d >= 0.0) return value; /* the int's sign: value < 0.0 compares exactly */
            break;
        }
        if (PyLong_Check(value) || PyFloat_Check(value)) return NULL;
        break;
    case CHECK_INTEGER:
        if (PyBool_Check(value)) break;
        if (PyLong_CheckExact(value)) {
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (v == -1 && PyErr_Occurred()) return NULL;
            if (overflow > 0 || (overflow == 0 && v >= minimum)) return value;
            break;
        }
        if (PyLong_Check(value)) return NULL;
        break;
    }
    *bad = 1;
    return Py_None;
}

/* dict.get of an exact dict (borrowed, NULL when absent); -1: decline. */
static int body_get(PyObject *d, PyObject *key, PyObject **value) {
    if (!PyDict_CheckExact(d)) return -1;
    *value = PyDict_GetItemWithError(d, key);
    return *value || !PyErr_Occurred() ? 0 : -1;
}

/* check_body's response_format of body into out (nothing when there is no
 * format); -1: decline. The type is kept only when it is text, unchecked:
 * as check_body keeps it (wire.params compares it, nothing writes it). */
static int body_format(PyObject *body, PyObject *out) {
    PyObject *fmt, *text, *kind = NULL;
    if (body_get(body, k_response_format, &fmt) < 0) return -1;
    if (!fmt || fmt == Py_None) {
        fmt = NULL;
        if (body_get(body, k_text, &text) < 0) return -1;
        if (text && PyDict_Check(text) && body_get(text, k_format, &fmt) < 0) return -1;
    }
    if (!fmt || fmt == Py_None) return 0;
    if (PyDict_Check(fmt) && body_get(fmt, k_type, &kind) < 0) return -1;
    PyObject *value = Py_BuildValue("{OO}", k_type, kind && PyUnicode_Check(kind) ? kind : Py_None);
    int rc = value ? PyDict_SetItem(out, k_response_format, value) : -1;
    Py_XDECREF(value);
    return rc;
}

/* A new one-item list: findings' flags and problems, one per call (the
 * record may be changed later; no list is shared). */
static int body_set_list(PyObject *d, PyObject *key, PyObject *item) {
    PyObject *list = PyList_New(1);
    if (!list) return -1;
    PyList_SET_ITEM(list, 0, Py_NewRef(item));
    int rc = PyDict_SetItem(d, key, list);
    Py_DECREF(list);
    return rc;
}

/* body_event's data of the text from start, body_project's dict ``body``;
 * NULL (no error set): decline. */
static PyObject *body_data(const Line *L, Py_ssize_t start, PyObject *body) {
    PyObject *out = PyDict_New(), *data = NULL;
    int bad = 0;
    if (!out || !PyDict_CheckExact(body)) goto fail;
    for (int j = 0; j < BODY_FIELDS; j++) {
        PyObject *value, *kept;
        if (body_get(body, k_body_fields[j], &value) < 0) goto fail;
        if (!value) continue;
        kept = body_checked(BODY_CHECKS[j].check, BODY_CHECKS[j].minimum, value, &bad);
        if (!kept || PyDict_SetItem(out, k_body_fields[j], kept) < 0) goto fail;
    }
    if (body_format(body, out) < 0) goto fail;
    if (bad && body_set_list(out, k_input_flags, k_invalid_field) < 0) goto fail;
    data = Py_BuildValue("{OOOnOO}", k_body, out, k_raw_len, L->n - start, k_truncated_body, Py_False);
    if (!data || (bad && body_set_list(data, k_problems, k_body_invalid_field) < 0)) goto fail;
    Py_DECREF(out);
    return data;
fail:
    PyErr_Clear(); /* never an error of the line: body_event decides */
    Py_XDECREF(out);
    Py_XDECREF(data);
    return NULL;
}

#endif /* VLLM_AUDIT_SCAN_BODYCHECK_H */
