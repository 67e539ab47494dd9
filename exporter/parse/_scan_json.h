/* _scan.c's record encoder: json_line(obj, sort_keys) is exactly
 *   json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=...).encode(obj)
 * (text true: that str; false: it encoded to UTF-8), for the values a record holds: exact dict (str
 * keys), list, tuple, str, int, finite float, True, False, None. Anything
 * else (a subclass, NaN or infinity, a lone surrogate, nesting deeper than
 * JSON_MAX_DEPTH, which also stops a cycle) is a decline: None, and the
 * caller runs the json module, which stays the reference (and raises what
 * it raises). exporter/record.py uses it; tests/test_record_encoder.py
 * proves it equal to json on records and on hypothesis-made values. */
#ifndef VLLM_AUDIT_SCAN_JSON_H
#define VLLM_AUDIT_SCAN_JSON_H

#include <math.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} JBuf;

/* 0 ok, -1 error set */
static int jb_grow(JBuf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) { PyErr_NoMemory(); return -1; }
        cap *= 2;
    }
    char *nb = PyMem_Realloc(b->buf, (size_t)cap);
    if (!nb) { PyErr_NoMemory(); return -1; }
    b->buf = nb;
    b->cap = cap;
    return 0;
}

static int jb_put(JBuf *b, const char *s, Py_ssize_t n) {
    if (jb_grow(b, n) < 0) return -1;
    memcpy(b->buf + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define JB_CHAR(b, c) ((b)->len < (b)->cap ? ((b)->buf[(b)->len++] = (c), 0) : jb_char_slow((b), (c)))
static int jb_char_slow(JBuf *b, char c) {
    if (jb_grow(b, 1) < 0) return -1;
    b->buf[b->len++] = c;
    return 0;
}

/* Results of the encoders below: OK, DECLINED (no error set), FAILED (error set). */
enum { J_OK = 0, J_DECLINED = 1, J_FAILED = -1 };

/* Eight bytes none of which json escapes (a control character, '"', '\\'),
 * tested at once (SWAR): each term flags exactly the words holding such a
 * byte (its borrow can only run on from a byte that does), so a plain
 * word is copied without a look at each byte. */
static inline int j_plain8(const char *p) {
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t w, q, s;
    memcpy(&w, p, 8);
    q = w ^ (ones * '"');
    s = w ^ (ones * '\\');
    return ((((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((s - ones) & ~s)) & highs) == 0;
}

static int j_str(JBuf *b, PyObject *s) {
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (!u) {  /* a lone surrogate: json writes it, UTF-8 cannot; the caller decides */
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) { PyErr_Clear(); return J_DECLINED; }
        return J_FAILED;
    }
    if (jb_grow(b, n + 2) < 0) return J_FAILED;
    b->buf[b->len++] = '"';
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        while (i + 8 <= n && j_plain8(u + i)) i += 8;
        if (i >= n) break;
        unsigned char c = (unsigned char)u[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (jb_put(b, u + run, i - run) < 0) return J_FAILED;
        run = i + 1;
        char esc[7];
        const char *e = esc;
        Py_ssize_t k = 2;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        default: {
            static const char hex[] = "0123456789abcdef";
            esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; esc[6] = 0;
            k = 6;
        }
        }
        if (jb_put(b, e, k) < 0) return J_FAILED;
    }
    if (jb_put(b, u + run, n - run) < 0) return J_FAILED;
    return JB_CHAR(b, '"') < 0 ? J_FAILED : J_OK;
}

static int j_repr(JBuf *b, PyObject *o) {  /* int and float: their repr, as json writes them */
    PyObject *r = PyObject_Repr(o);
    if (!r) return J_FAILED;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(r, &n);
    int rc = (!u || jb_put(b, u, n) < 0) ? J_FAILED : J_OK;
    Py_DECREF(r);
    return rc;
}

static int j_value(JBuf *b, PyObject *o, int sort, int depth);

static int j_dict(JBuf *b, PyObject *d, int sort, int depth) {
    if (PyDict_GET_SIZE(d) == 0) return jb_put(b, "{}", 2) < 0 ? J_FAILED : J_OK;
    PyObject *keys = NULL;
    int rc = J_OK;
    if (JB_CHAR(b, '{') < 0) return J_FAILED;
    if (sort) {
        keys = PyDict_Keys(d);
        if (!keys) return J_FAILED;
        Py_ssize_t nk = PyList_GET_SIZE(keys);
        for (Py_ssize_t i = 0; i < nk; i++)
            if (!PyUnicode_CheckExact(PyList_GET_ITEM(keys, i))) { Py_DECREF(keys); return J_DECLINED; }
        if (PyList_Sort(keys) < 0) { Py_DECREF(keys); return J_FAILED; }
        for (Py_ssize_t i = 0; i < nk && rc == J_OK; i++) {
            PyObject *k = PyList_GET_ITEM(keys, i);
            PyObject *v = PyDict_GetItemWithError(d, k);
            if (!v) { rc = PyErr_Occurred() ? J_FAILED : J_DECLINED; break; }
            Py_INCREF(v);
            if (i && JB_CHAR(b, ',') < 0) rc = J_FAILED;
            if (rc == J_OK) rc = j_str(b, k);
            if (rc == J_OK && JB_CHAR(b, ':') < 0) rc = J_FAILED;
            if (rc == J_OK) rc = j_value(b, v, sort, depth + 1);
            Py_DECREF(v);
        }
        Py_DECREF(keys);
    } else {
        Py_ssize_t pos = 0, i = 0;
        PyObject *k, *v;
        Py_ssize_t size = PyDict_GET_SIZE(d);
        while (rc == J_OK && PyDict_Next(d, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k)) return J_DECLINED;
            Py_INCREF(k);
            Py_INCREF(v);
            if (i++ && JB_CHAR(b, ',') < 0) rc = J_FAILED;
            if (rc == J_OK) rc = j_str(b, k);
            if (rc == J_OK && JB_CHAR(b, ':') < 0) rc = J_FAILED;
            if (rc == J_OK) rc = j_value(b, v, sort, depth + 1);
            Py_DECREF(k);
            Py_DECREF(v);
            if (rc == J_OK && PyDict_GET_SIZE(d) != size) rc = J_DECLINED;  /* changed under us */
        }
    }
    if (rc != J_OK) return rc;
    return JB_CHAR(b, '}') < 0 ? J_FAILED : J_OK;
}

static int j_seq(JBuf *b, PyObject *o, int sort, int depth) {
    PyObject *fast = PySequence_Fast(o, "");  /* a list or tuple: itself */
    if (!fast) return J_FAILED;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int rc = JB_CHAR(b, '[') < 0 ? J_FAILED : J_OK;
    for (Py_ssize_t i = 0; i < n && rc == J_OK; i++) {
        if (n != PySequence_Fast_GET_SIZE(fast)) { rc = J_DECLINED; break; }  /* a list changed */
        PyObject *v = PySequence_Fast_GET_ITEM(fast, i);
        Py_INCREF(v);
        if (i && JB_CHAR(b, ',') < 0) rc = J_FAILED;
        if (rc == J_OK) rc = j_value(b, v, sort, depth + 1);
        Py_DECREF(v);
    }
    Py_DECREF(fast);
    if (rc != J_OK) return rc;
    return JB_CHAR(b, ']') < 0 ? J_FAILED : J_OK;
}

static int j_value(JBuf *b, PyObject *o, int sort, int depth) {
    if (depth > JSON_MAX_DEPTH) return J_DECLINED;
    if (o == Py_None) return jb_put(b, "null", 4) < 0 ? J_FAILED : J_OK;
    if (o == Py_True) return jb_put(b, "true", 4) < 0 ? J_FAILED : J_OK;
    if (o == Py_False) return jb_put(b, "false", 5) < 0 ? J_FAILED : J_OK;
    if (PyUnicode_CheckExact(o)) return j_str(b, o);
    if (PyLong_CheckExact(o)) return j_repr(b, o);
    if (PyFloat_CheckExact(o)) {
        double x = PyFloat_AS_DOUBLE(o);
        if (!isfinite(x)) return J_DECLINED;
        return j_repr(b, o);
    }
    if (PyDict_CheckExact(o)) return j_dict(b, o, sort, depth);
    if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) return j_seq(b, o, sort, depth);
    return J_DECLINED;
}

/* json_line(obj, sort_keys, text) -> bytes (str if text) | None */
static PyObject *json_line(PyObject *self, PyObject *args) {
    PyObject *o;
    int sort, text;
    if (!PyArg_ParseTuple(args, "Opp", &o, &sort, &text)) return NULL;
    JBuf b = {NULL, 0, 0};
    int rc = j_value(&b, o, sort, 0);
    PyObject *r = NULL;
    if (rc == J_OK)
        r = text ? PyUnicode_DecodeUTF8(b.buf ? b.buf : "", b.len, NULL)
                 : PyBytes_FromStringAndSize(b.buf ? b.buf : "", b.len);
    else if (rc == J_DECLINED) r = Py_NewRef(Py_None);
    PyMem_Free(b.buf);
    return r;
}

#endif
