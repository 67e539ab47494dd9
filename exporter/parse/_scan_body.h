/* _scan.c's reading of a client's DEBUG "JSON body": body_project(L, start)
 * is the dict of the top-level members check_body reads (BODY_KEYS), each
 * exactly as json.loads(L->s[start:]) gives it -- or a decline (NULL, no
 * error set), and body_line.body_event then runs json.loads itself.
 *
 * Why: the body is the client's whole conversation, and json.loads builds
 * every message of it (dicts, lists, strings) only for check_body to keep
 * the model, user, stream and sampling fields: a tenth of a replay's CPU
 * went to building and freeing objects nobody reads. Here the rest is
 * validated and skipped, never built.
 *
 * Declining is always correct, so the validator accepts a strict subset of
 * what json.loads accepts: RFC 8259 JSON (no NaN/Infinity, no control
 * character in a string), nesting at most BODY_MAX_DEPTH, numbers of at
 * most BODY_MAX_NUMBER characters (json.loads refuses an int of more than
 * sys.int_info.str_digits_check_threshold digits), nothing but whitespace
 * after the object. Anything else -- a body cut by --max-log-len above all
 * -- declines, and json.loads decides, with its own errors. A kept member
 * is decoded the way json.loads decodes it: text without a backslash is the
 * substring, a number goes through PyFloat_FromString/PyLong_FromString
 * like json's scanner, true/false/null are the singletons, and anything
 * else (an escaped string, an object, an array) is json.loads of exactly
 * its own text. A top-level key with a backslash (it could decode to a kept
 * name) or a kept key given twice (json keeps the last) declines.
 * tests/test_body_project.py proves the result equal to json.loads'. */
#ifndef VLLM_AUDIT_SCAN_BODY_H
#define VLLM_AUDIT_SCAN_BODY_H

#define BODY_MAX_DEPTH 100
#define BODY_MAX_NUMBER 64

static const char *const BODY_KEYS[] = {"model", "user", "stream", "temperature", "max_completion_tokens",
                                        "max_tokens", "max_output_tokens", "n", "response_format", "text",
                                        NULL};
static PyObject *g_json_loads; /* json.loads, imported on first use */

static inline int body_ws(Py_UCS4 c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static inline int body_hex(Py_UCS4 c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static inline Py_ssize_t body_skip_ws(const Line *L, Py_ssize_t i) {
    while (i < L->n && body_ws(CH(L, i))) i++;
    return i;
}

/* The plain run of a string from i: up to a quote, a backslash or a control
 * character. One loop per storage kind: this is where a body's bytes are. */
static Py_ssize_t body_plain_run(const Line *L, Py_ssize_t i) {
    Py_ssize_t n = L->n;
    switch (L->kind) {
    case PyUnicode_1BYTE_KIND: {
        const Py_UCS1 *p = (const Py_UCS1 *)L->data;
        while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') i++;
        return i;
    }
    case PyUnicode_2BYTE_KIND: {
        const Py_UCS2 *p = (const Py_UCS2 *)L->data;
        while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') i++;
        return i;
    }
    default: {
        const Py_UCS4 *p = (const Py_UCS4 *)L->data;
        while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') i++;
        return i;
    }
    }
}

/* A string at i (its opening quote): the index after its closing quote, or
 * -1 (decline). *escaped is set when it holds a backslash. */
static Py_ssize_t body_string(const Line *L, Py_ssize_t i, int *escaped) {
    Py_ssize_t n = L->n;
    i++;
    for (;;) {
        i = body_plain_run(L, i);
        if (i >= n) return -1;
        Py_UCS4 c = CH(L, i);
        if (c == '"') return i + 1;
        if (c != '\\') return -1; /* a control character: json.loads refuses it (strict) */
        *escaped = 1;
        if (i + 1 >= n) return -1;
        Py_UCS4 e = CH(L, i + 1);
        if (e == 'u') {
            if (i + 5 >= n) return -1;
            for (Py_ssize_t k = i + 2; k <= i + 5; k++)
                if (!body_hex(CH(L, k))) return -1;
            i += 6;
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
            i += 2;
        } else {
            return -1;
        }
    }
}

/* A number at i: its end, or -1. *is_float as json's scanner sets it (a
 * fraction or an exponent). */
static Py_ssize_t body_number(const Line *L, Py_ssize_t i, int *is_float) {
    Py_ssize_t n = L->n, start = i;
    if (i < n && CH(L, i) == '-') i++;
    if (i >= n) return -1;
    if (CH(L, i) == '0') {
        i++;
    } else if (CH(L, i) >= '1' && CH(L, i) <= '9') {
        while (i < n && is_digit(CH(L, i))) i++;
    } else {
        return -1; /* -Infinity, or not a number */
    }
    if (i < n && CH(L, i) == '.') {
        i++;
        if (i >= n || !is_digit(CH(L, i))) return -1;
        while (i < n && is_digit(CH(L, i))) i++;
        *is_float = 1;
    }
    if (i < n && (CH(L, i) == 'e' || CH(L, i) == 'E')) {
        i++;
        if (i < n && (CH(L, i) == '+' || CH(L, i) == '-')) i++;
        if (i >= n || !is_digit(CH(L, i))) return -1;
        while (i < n && is_digit(CH(L, i))) i++;
        *is_float = 1;
    }
    return i - start > BODY_MAX_NUMBER ? -1 : i;
}

static Py_ssize_t body_value(const Line *L, Py_ssize_t i, int depth);

/* An object or array at i (its bracket), skipped: the index after it, or -1. */
static Py_ssize_t body_container(const Line *L, Py_ssize_t i, int depth) {
    if (depth > BODY_MAX_DEPTH) return -1;
    Py_UCS4 close = CH(L, i) == '{' ? '}' : ']';
    int object = close == '}';
    i = body_skip_ws(L, i + 1);
    if (i < L->n && CH(L, i) == close) return i + 1;
    for (;;) {
        if (object) {
            int esc = 0;
            if (i >= L->n || CH(L, i) != '"') return -1;
            i = body_string(L, i, &esc);
            if (i < 0) return -1;
            i = body_skip_ws(L, i);
            if (i >= L->n || CH(L, i) != ':') return -1;
            i = body_skip_ws(L, i + 1);
        }
        i = body_value(L, i, depth);
        if (i < 0) return -1;
        i = body_skip_ws(L, i);
        if (i >= L->n) return -1;
        Py_UCS4 c = CH(L, i);
        if (c == close) return i + 1;
        if (c != ',') return -1;
        i = body_skip_ws(L, i + 1);
    }
}

static Py_ssize_t body_value(const Line *L, Py_ssize_t i, int depth) {
    if (i >= L->n) return -1;
    Py_UCS4 c = CH(L, i);
    int unused = 0;
    switch (c) {
    case '"': return body_string(L, i, &unused);
    case '{':
    case '[': return body_container(L, i, depth + 1);
    case 't': return starts(L, i, "true") ? i + 4 : -1;
    case 'f': return starts(L, i, "false") ? i + 5 : -1;
    case 'n': return starts(L, i, "null") ? i + 4 : -1;
    default: return (c == '-' || is_digit(c)) ? body_number(L, i, &unused) : -1;
    }
}

static int body_kept(const Line *L, Py_ssize_t a, Py_ssize_t b) { /* the key's text is [a, b) */
    if (b - a > 21) return 0; /* no kept key is longer ("max_completion_tokens") */
    for (const char *const *k = BODY_KEYS; *k; k++)
        if ((Py_ssize_t)strlen(*k) == b - a && starts(L, a, *k)) return 1;
    return 0;
}

/* The kept member's value [a, b) as json.loads gives it; NULL with an error
 * set on failure (the caller turns any failure into a decline). */
static PyObject *body_decode(const Line *L, Py_ssize_t a, Py_ssize_t b) {
    Py_UCS4 c = CH(L, a);
    if (c == 't') Py_RETURN_TRUE;
    if (c == 'f') Py_RETURN_FALSE;
    if (c == 'n') Py_RETURN_NONE;
    if (c == '"') {
        int esc = 0;
        if (body_string(L, a, &esc) == b && !esc) return PyUnicode_Substring(L->s, a + 1, b - 1);
    } else if (c == '-' || is_digit(c)) {
        int is_float = 0;
        if (body_number(L, a, &is_float) != b) {
            PyErr_SetString(PyExc_ValueError, "number");
            return NULL;
        }
        char buf[BODY_MAX_NUMBER + 1];
        for (Py_ssize_t k = a; k < b; k++) buf[k - a] = (char)CH(L, k);
        buf[b - a] = 0;
        if (!is_float) {
            if (b - a <= 18) { /* fits a long long: the value PyLong_FromString would give */
                long long v = 0;
                for (Py_ssize_t k = buf[0] == '-'; k < b - a; k++) v = v * 10 + (buf[k] - '0');
                return PyLong_FromLongLong(buf[0] == '-' ? -v : v);
            }
            return PyLong_FromString(buf, NULL, 10);
        }
        /* float(text) is PyOS_string_to_double of it; with no overflow
         * exception asked for, out of range is +-inf, as float() gives. */
        char *end = NULL;
        double d = PyOS_string_to_double(buf, &end, NULL);
        if (d == -1.0 && PyErr_Occurred()) return NULL;
        if (end != buf + (b - a)) {
            PyErr_SetString(PyExc_ValueError, "number");
            return NULL;
        }
        return PyFloat_FromDouble(d);
    }
    if (!g_json_loads) {
        PyObject *json = PyImport_ImportModule("json");
        if (!json) return NULL;
        g_json_loads = PyObject_GetAttrString(json, "loads");
        Py_DECREF(json);
        if (!g_json_loads) return NULL;
    }
    PyObject *text = PyUnicode_Substring(L->s, a, b);
    if (!text) return NULL;
    PyObject *r = PyObject_CallOneArg(g_json_loads, text);
    Py_DECREF(text);
    return r;
}

/* The projection of the object at start, or NULL: a decline, no error set. */
static PyObject *body_project(const Line *L, Py_ssize_t start) {
    Py_ssize_t i = start, n = L->n;
    if (i >= n || CH(L, i) != '{') return NULL;
    PyObject *out = PyDict_New();
    if (!out) goto fail;
    i = body_skip_ws(L, i + 1);
    if (i < n && CH(L, i) == '}') {
        i++;
        goto end;
    }
    for (;;) {
        int esc = 0;
        if (i >= n || CH(L, i) != '"') goto decline;
        Py_ssize_t ka = i + 1, kb = body_string(L, i, &esc);
        if (kb < 0 || esc) goto decline;
        i = body_skip_ws(L, kb);
        if (i >= n || CH(L, i) != ':') goto decline;
        Py_ssize_t va = body_skip_ws(L, i + 1);
        Py_ssize_t vb = body_value(L, va, 1);
        if (vb < 0) goto decline;
        if (body_kept(L, ka, kb - 1)) {
            PyObject *key = PyUnicode_Substring(L->s, ka, kb - 1);
            if (!key) goto fail;
            int dup = PyDict_Contains(out, key);
            PyObject *value = dup == 0 ? body_decode(L, va, vb) : NULL;
            int rc = value ? PyDict_SetItem(out, key, value) : -1;
            Py_DECREF(key);
            Py_XDECREF(value);
            if (dup != 0 || rc < 0) goto fail; /* a kept key twice: json keeps the last; let it */
        }
        i = body_skip_ws(L, vb);
        if (i >= n) goto decline;
        if (CH(L, i) == '}') {
            i++;
            break;
        }
        if (CH(L, i) != ',') goto decline;
        i = body_skip_ws(L, i + 1);
    }
end:
    if (body_skip_ws(L, i) != n) goto decline; /* json.loads: "Extra data" */
    return out;
fail:
    PyErr_Clear(); /* never an error of the line: json.loads decides */
decline:
    Py_XDECREF(out);
    return NULL;
}

#endif /* VLLM_AUDIT_SCAN_BODY_H */
