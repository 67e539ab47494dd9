/* Repr literals, token-id lists, bracketed groups and the field grammar
 * (pyrepr.py and fields.py, restricted: anything else declines). */
#ifndef VLLM_AUDIT_SCAN_REPR_H
#define VLLM_AUDIT_SCAN_REPR_H

#include "_scan_common.h"

/* -- repr literals ------------------------------------------------------------ */

/* Index past the literal whose quote is at a (the unrolled-loop regex), or -1. */
static Py_ssize_t string_end(const Line *L, Py_ssize_t a) {
    Py_UCS4 q = CH(L, a);
    Py_ssize_t j = a + 1;
    if (L->kind == PyUnicode_1BYTE_KIND) {  /* the same loop without the per-character kind switch */
        const Py_UCS1 *d = (const Py_UCS1 *)L->data;
        while (j < L->n) {
            Py_UCS1 c = d[j];
            if (c == '\\') j += 2;
            else if (c == q) return j + 1;
            else j++;
        }
        return -1;
    }
    while (j < L->n) {
        Py_UCS4 c = CH(L, j);
        if (c == '\\') j += 2;
        else if (c == q) return j + 1;
        else j++;
    }
    return -1;
}

static int hexval(Py_UCS4 c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
    return -1;
}

static int usual_escape(Py_UCS4 c) {
    return c != 0 && c < 128 && strchr("\\'\"abfnrtvxuU01234567", (int)c) != NULL;
}

/* pyrepr.decode_literal(s, a, b), both of its paths: the unicode_escape
 * codec (only repr's escapes present; raw surrogates become U+FFFD) and
 * _unescape (any other escape: kept with its backslash, raw text kept as
 * is). NULL without error declines (a bad \\x/\\u/\\U, a dangling
 * backslash: Python raises ReprError, the Python path reports it). */
static PyObject *decode_literal(const Line *L, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t i = a + 1, e = b - 1, slash = -1;
    int unusual = 0;
    for (Py_ssize_t j = i; j < e; j++) {
        if (CH(L, j) == '\\') {
            if (slash < 0) slash = j;
            /* _UNUSUAL_ESCAPE is searched at every backslash, escaped or not */
            if (j + 1 >= e || !usual_escape(CH(L, j + 1))) unusual = 1;
        }
    }
    if (slash < 0) return PyUnicode_Substring(L->s, i, e);
    Py_UCS4 *buf = PyMem_Malloc(sizeof(Py_UCS4) * (size_t)(e - i + 1));
    if (!buf) return PyErr_NoMemory();
    Py_ssize_t o = 0;
    for (Py_ssize_t j = i; j < e;) {
        Py_UCS4 c = CH(L, j);
        if (c != '\\') {
            buf[o++] = (!unusual && c >= 0xD800 && c <= 0xDFFF) ? 0xFFFD : c;
            j++;
            continue;
        }
        if (j + 1 >= e) goto decline; /* dangling backslash */
        Py_UCS4 x = CH(L, j + 1), out;
        int width = x == 'x' ? 2 : x == 'u' ? 4 : x == 'U' ? 8 : 0;
        if (width) {
            if (j + 2 + width > e) goto decline;
            Py_UCS4 v = 0;
            for (int d = 0; d < width; d++) {
                int h = hexval(CH(L, j + 2 + d));
                if (h < 0) goto decline;
                v = v * 16 + (Py_UCS4)h;
            }
            if (v > 0x10FFFF) goto decline;
            out = (v >= 0xD800 && v <= 0xDFFF) ? 0xFFFD : v;
            j += 2 + width;
        } else if (x >= '0' && x <= '7') {
            Py_UCS4 v = 0;
            Py_ssize_t k = j + 1;
            while (k < e && k < j + 4 && CH(L, k) >= '0' && CH(L, k) <= '7') v = v * 8 + (CH(L, k++) - '0');
            out = v;
            j = k;
        } else {
            j += 2;
            switch (x) {
            case 'n': out = '\n'; break;
            case 't': out = '\t'; break;
            case 'r': out = '\r'; break;
            case 'a': out = '\a'; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'v': out = '\v'; break;
            case '\\': case '\'': case '"': out = x; break;
            case '\n': continue; /* backslash-newline: nothing (only _unescape sees it) */
            default: buf[o++] = '\\'; out = x; /* unknown escape: Python keeps the backslash */
            }
        }
        buf[o++] = out;
    }
    PyObject *r = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, buf, o);
    PyMem_Free(buf);
    return r;
decline:
    PyMem_Free(buf);
    return DECLINE;
}

/* A literal or None at a..b: the decoded text, Py_None, or NULL to decline. */
static PyObject *str_or_none(const Line *L, Py_ssize_t a, Py_ssize_t b) {
    if (b == a + 4 && starts(L, a, "None")) Py_RETURN_NONE;
    if (a >= b || (CH(L, a) != '\'' && CH(L, a) != '"') || string_end(L, a) != b) return DECLINE;
    return decode_literal(L, a, b);
}

/* "[]" or "[D, D, ...]" with canonical decimal ints (what vLLM writes and
 * what json.loads and int_list_end agree on); end index or -1. */
static Py_ssize_t strict_list_end(const Line *L, Py_ssize_t a, Py_ssize_t *count) {
    if (a >= L->n || CH(L, a) != '[') return -1;
    Py_ssize_t j = a + 1, c = 0;
    if (j < L->n && CH(L, j) == ']') { *count = 0; return j + 1; }
    for (;;) {
        Py_ssize_t d = j;
        while (j < L->n && is_digit(CH(L, j))) j++;
        if (j == d || j - d > 18 || (j - d > 1 && CH(L, d) == '0')) return -1;
        c++;
        if (j < L->n && CH(L, j) == ']') { *count = c; return j + 1; }
        if (!starts(L, j, ", ")) return -1;
        j += 2;
    }
}

static PyObject *int_list(const Line *L, Py_ssize_t a, Py_ssize_t count) {
    PyObject *out = PyList_New(count);
    if (!out) return NULL;
    Py_ssize_t j = a + 1;
    for (Py_ssize_t k = 0; k < count; k++) {
        long long v = 0;
        while (is_digit(CH(L, j))) { v = v * 10 + (long long)(CH(L, j) - '0'); j++; }
        j += 2;
        PyObject *x = PyLong_FromLongLong(v);
        if (!x) { Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(out, k, x);
    }
    return out;
}

/* ids_or_none: sets *ids and *count (new refs) or returns 0 to decline. */
static int ids_or_none(const Line *L, Py_ssize_t a, Py_ssize_t b, PyObject **ids, PyObject **count) {
    if (b == a + 4 && starts(L, a, "None")) {
        *ids = Py_NewRef(Py_None);
        *count = Py_NewRef(Py_None);
        return 1;
    }
    Py_ssize_t n = 0;
    if (strict_list_end(L, a, &n) != b) return 0;
    *ids = int_list(L, a, n);
    if (!*ids) return -1;
    *count = PyLong_FromSsize_t(n);
    if (!*count) { Py_CLEAR(*ids); return -1; }
    return 1;
}

/* -- fields: "name: value, name: value" (fields.fields, restricted) ---------- */

typedef struct { Py_ssize_t na, nb, a, b; } Field;

/* Index past the group opened at k (pyrepr.group_end), or -1. */
static Py_ssize_t group_end(const Line *L, Py_ssize_t k) {
    char stack[201];
    int depth = 0;
    long budget = 50000;
    Py_ssize_t j = k;
    for (;;) {
        Py_UCS4 c = CH(L, j);
        if (c == '(' || c == '[' || c == '{') {
            /* well inside pyrepr's limits (200 deep, 100 000 brackets), so
             * Python never refuses what is accepted here */
            if (depth >= 150 || --budget < 0) return -1;
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            j++;
        } else if (c == ')' || c == ']' || c == '}') {
            if (--budget < 0 || stack[--depth] != (char)c) return -1;
            j++;
            if (depth == 0) return j;
        } else if (c == '\'' || c == '"') {
            j = string_end(L, j);
            if (j < 0) return -1;
        } else {
            j++;
        }
        if (j >= L->n) return -1;
    }
}

/* One value at a, ending at a ", " or at end; -1 to decline. */
static Py_ssize_t simple_value_end(const Line *L, Py_ssize_t a, Py_ssize_t end, int params,
                                   Py_ssize_t *open) {
    Py_ssize_t b;
    if (a >= end) return -1;
    Py_UCS4 c = CH(L, a);
    if (c == '\'' || c == '"') {
        b = string_end(L, a);
    } else if (c == '[') {
        b = a + 1;
        while (b < end && (is_digit(CH(L, b)) || CH(L, b) == ',' || CH(L, b) == ' ')) b++;
        if (b >= end || CH(L, b) != ']') return -1;
        b++;
    } else if (params) {
        /* Name(...): the Python side reads it (sampling_params) */
        if (is_digit(c)) return -1;
        Py_ssize_t k = a;
        while (k < end && k < a + 80 && is_word(CH(L, k))) k++;
        if (k == a || k >= end || k >= a + 80 || CH(L, k) != '(') return -1;
        b = group_end(L, k);
        if (b < 0 || b > end) return -1;
        /* 0.6.3's trailing ", guided_decoding=..." pairs: Python's business */
        if (starts(L, b, ", ")) {
            Py_ssize_t w = b + 2;
            while (w < end && is_word(CH(L, w))) w++;
            if (w < end && (CH(L, w) == '=' || CH(L, w) >= 128)) return -1;
        }
        *open = k;
    } else {
        /* a bare atom such as None: letters, digits, "_", "." only */
        b = a;
        while (b < end && (is_word(CH(L, b)) || CH(L, b) == '.')) b++;
        if (b == a) return -1;
    }
    if (b < 0 || b > end) return -1;
    return (b == end || starts(L, b, ", ")) ? b : -1;
}

/* Fields of s[i:end]; returns the count or -1 to decline. */
static int scan_fields(const Line *L, Py_ssize_t i, Py_ssize_t end, Field *out, Py_ssize_t *open) {
    int n = 0;
    for (;;) {
        if (n >= MAX_FIELDS) return -1;
        Py_ssize_t j = i;
        if (j >= end) return -1;
        Py_UCS4 c = CH(L, j);
        if (!((c >= 'a' && c <= 'z') || c == '_')) return -1;
        j++;
        while (j < end && j - i <= 40 && ((CH(L, j) >= 'a' && CH(L, j) <= 'z') || CH(L, j) == '_' || CH(L, j) == ' ')) j++;
        if (j + 2 > end || CH(L, j) != ':' || CH(L, j + 1) != ' ') return -1;
        Field *f = &out[n];
        f->na = i; f->nb = j; f->a = j + 2;
        for (int p = 0; p < n; p++) {
            if (out[p].nb - out[p].na == f->nb - f->na) {
                Py_ssize_t q = 0;
                while (q < f->nb - f->na && CH(L, out[p].na + q) == CH(L, f->na + q)) q++;
                if (q == f->nb - f->na) return -1; /* repeated: Python raises */
            }
        }
        int params = (f->nb - f->na == 6) && starts(L, f->na, "params");
        f->b = simple_value_end(L, f->a, end, params, open);
        if (f->b < 0) return -1;
        n++;
        if (f->b >= end) return n;
        i = f->b + 2;
    }
}

static Field *find_field(const Line *L, Field *fs, int n, const char *name) {
    Py_ssize_t k = (Py_ssize_t)strlen(name);
    for (int p = 0; p < n; p++)
        if (fs[p].nb - fs[p].na == k && starts(L, fs[p].na, name)) return &fs[p];
    return NULL;
}

/* prompt / prompt_token_ids into data (messages._prompt_fields); 0 declines. */
static int prompt_fields(const Line *L, Field *fs, int n, PyObject *data) {
    Field *f = find_field(L, fs, n, "prompt");
    if (f) {
        PyObject *p = str_or_none(L, f->a, f->b);
        if (!p) return PyErr_Occurred() ? -1 : 0;
        int r = PyDict_SetItem(data, k_prompt, p);
        Py_DECREF(p);
        if (r) return -1;
    }
    f = find_field(L, fs, n, "prompt_token_ids");
    if (f) {
        PyObject *ids, *count;
        int r = ids_or_none(L, f->a, f->b, &ids, &count);
        if (r <= 0) return r;
        r = PyDict_SetItem(data, k_prompt_token_ids, ids) || PyDict_SetItem(data, k_prompt_token_count, count);
        Py_DECREF(ids); Py_DECREF(count);
        if (r) return -1;
    }
    return 1;
}

#endif /* VLLM_AUDIT_SCAN_REPR_H */
