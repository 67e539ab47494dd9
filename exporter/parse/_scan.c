/* Optional C fast path of exporter.parse.messages.parse_line.
 *
 * scan(text) parses the few line shapes that are nearly all of a request
 * log's bytes (Generated response ..., Added/Finished request ..., Request X
 * details: ..., Received request X: ...) and returns exactly the Event the
 * pure-Python parser returns for that line, or None. None means "not
 * certain": the caller then runs the Python parser, which stays the
 * reference and the only judge of every other line. So this file never has
 * to reproduce an error path: any doubt (non-ASCII where Python's regexes are
 * Unicode-aware, an unusual escape, a field value other than a literal, an
 * int list or a bare atom, ...) is a decline. The security rules are the
 * Python parser's (messages.py docstring): field boundaries come from
 * scanning repr literals, never from searching for separators, the logger
 * file must match the message kind, ids contain no whitespace.
 *
 * The header is located here but judged in Python: on a cache miss the
 * Python text_header() reads the line and its (Header, end) is kept under
 * the header's exact text, so the regex stays the single definition.
 * tests/test_scan_differential.py proves C and Python agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *g_event;        /* exporter.events.Event */
static PyObject *g_header_fn;    /* text -> (Header, end) | None */
static PyObject *g_params_fn;    /* sampling_params(s, f) */
static PyObject *g_body_fn;      /* body_line.body_event(s, start, rid, when) */
static PyObject *g_access;       /* ACCESS */
static PyObject *g_kinds[5];     /* OUTPUT, OUTPUT_DETAILS, ADDED, FINISHED, DETAILS */
static PyObject *g_received;     /* RECEIVED */
static PyObject *g_headers;      /* dict: header text -> Header */
static PyObject *g_info[3];      /* "", "delta", "complete" */
static PyObject *k_stream_info, *k_output_token_ids, *k_output_token_count, *k_output,
    *k_finish_reason, *k_prompt, *k_prompt_token_ids, *k_prompt_token_count, *k_params,
    *k_params_open;

#define HEADER_CACHE_MAX 4096
#define MAX_FIELDS 16

enum { K_OUTPUT, K_OUTPUT_DETAILS, K_ADDED, K_FINISHED, K_DETAILS };

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
    PyObject *s;
} Line;

#define CH(L, i) PyUnicode_READ((L)->kind, (L)->data, (i))

/* Declining is always correct; these keep the code flat. */
#define DECLINE ((PyObject *)NULL)

static int starts(const Line *L, Py_ssize_t i, const char *lit) {
    Py_ssize_t k = (Py_ssize_t)strlen(lit);
    if (i < 0 || i + k > L->n) return 0;
    for (Py_ssize_t j = 0; j < k; j++)
        if (CH(L, i + j) != (Py_UCS4)(unsigned char)lit[j]) return 0;
    return 1;
}

static int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static int is_graph(Py_UCS4 c) { return c >= 0x21 && c <= 0x7e; } /* ASCII, never \s in Python */
static int is_word(Py_UCS4 c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_';
}

/* -- header ---------------------------------------------------------------- */

/* End of "[(NAME pid=N) ]LEVEL MM-DD HH:MM:SS [FILE] " at 0, or -1: only
 * locates the header; Python's _HEADER regex decides what it is. */
static Py_ssize_t header_end(const Line *L) {
    Py_ssize_t i = 0, n = L->n;
    if (n && CH(L, 0) == '(') {
        Py_ssize_t k = 1;
        while (k < n && k <= 200 && CH(L, k) != ')' && CH(L, k) != '(') k++;
        if (k >= n || CH(L, k) != ')' || k + 1 >= n || CH(L, k + 1) != ' ') return -1;
        i = k + 2;
    }
    static const char *levels[] = {"DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL "};
    int found = 0;
    for (int j = 0; j < 5; j++)
        if (starts(L, i, levels[j])) { i += (Py_ssize_t)strlen(levels[j]); found = 1; break; }
    if (!found) return -1;
    static const char shape[] = "dd-dd dd:dd:dd ";
    if (i + 15 > n) return -1;
    for (int j = 0; j < 15; j++) {
        Py_UCS4 c = CH(L, i + j);
        if (shape[j] == 'd' ? !is_digit(c) : c != (Py_UCS4)shape[j]) return -1;
    }
    i += 15;
    if (i < n && CH(L, i) == '[') i++;
    Py_ssize_t a = i;
    while (i < n && is_graph(CH(L, i)) && CH(L, i) != ']') i++;
    if (i == a || i - a > 300 || !starts(L, i, "] ")) return -1;
    return i + 2;
}

/* The Header for text[:m] (borrowed), or NULL with no error set to decline. */
static PyObject *header_for(const Line *L, Py_ssize_t m) {
    PyObject *key = PyUnicode_Substring(L->s, 0, m);
    if (!key) return NULL;
    PyObject *h = PyDict_GetItemWithError(g_headers, key);
    if (h || PyErr_Occurred()) { Py_DECREF(key); return h; }
    PyObject *got = PyObject_CallOneArg(g_header_fn, L->s);
    if (!got) { Py_DECREF(key); return NULL; }
    if (got == Py_None || !PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2 ||
        PyLong_AsSsize_t(PyTuple_GET_ITEM(got, 1)) != m) {
        PyErr_Clear();
        Py_DECREF(got); Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(g_headers) >= HEADER_CACHE_MAX) PyDict_Clear(g_headers);
    h = PyTuple_GET_ITEM(got, 0);
    int bad = PyDict_SetItem(g_headers, key, h);
    Py_DECREF(key);
    Py_DECREF(got);  /* the dict keeps h alive (borrowed by the caller) */
    return bad ? NULL : h;
}

static int file_is(PyObject *file, const char *const *names) {
    for (; *names; names++)
        if (PyUnicode_CompareWithASCIIString(file, *names) == 0) return 1;
    return 0;
}

static const char *const REQUEST_LOGGER_FILES[] = {"logger.py", "request_logger.py", NULL};
static const char *const ENGINE_FILES[] = {"async_llm.py", "engine.py", "async_llm_engine.py", NULL};

/* -- repr literals ------------------------------------------------------------ */

/* Index past the literal whose quote is at a (the unrolled-loop regex), or -1. */
static Py_ssize_t string_end(const Line *L, Py_ssize_t a) {
    Py_UCS4 q = CH(L, a);
    Py_ssize_t j = a + 1;
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

/* -- messages ------------------------------------------------------------------ */

static PyObject *event(PyObject *kind, PyObject *rid, PyObject *when, PyObject *data) {
    PyObject *r = NULL;
    if (rid && data) r = PyObject_CallFunctionObjArgs(g_event, kind, rid, when, data, NULL);
    Py_XDECREF(rid);
    Py_XDECREF(data);
    return r;
}

/* messages._generated_fast, for what _OUTPUT_LINE matches (restricted to ASCII ids). */
static PyObject *generated(const Line *L, Py_ssize_t i, PyObject *when) {
    Py_ssize_t n = L->n, j = i;
    while (j < n && is_graph(CH(L, j))) j++;
    if (j >= n || CH(L, j) != ' ' || j == i) return DECLINE;
    Py_ssize_t rid_end = j, pos;
    int info = 0;
    if (CH(L, j - 1) == ':' && starts(L, j, " output: ")) {
        rid_end = j - 1;
        pos = j - 1;
    } else {
        pos = j;
        if (starts(L, j, " (streaming delta)")) { info = 1; pos += 18; }
        else if (starts(L, j, " (streaming complete)")) { info = 2; pos += 21; }
    }
    if (rid_end == i || rid_end - i > 2048) return DECLINE;
    if (starts(L, pos, " details: output_token_ids: ")) {
        Py_ssize_t a = pos + 28;
        PyObject *ids, *count;
        if (ids_or_none(L, a, n, &ids, &count) <= 0) return DECLINE;
        PyObject *data = Py_BuildValue("{OOONON}", k_stream_info, g_info[info], k_output_token_ids, ids,
                                       k_output_token_count, count);
        return event(g_kinds[K_OUTPUT_DETAILS], PyUnicode_Substring(L->s, i, rid_end), when, data);
    }
    if (!starts(L, pos, ": output: ")) return DECLINE;
    Py_ssize_t a = pos + 10, b;
    if (starts(L, a, "None")) b = a + 4;
    else if (a < n && (CH(L, a) == '\'' || CH(L, a) == '"')) b = string_end(L, a);
    else return DECLINE;
    if (b < 0 || !starts(L, b, ", ")) return DECLINE;
    Py_ssize_t k = b + 2, la = -1, lb = -1;
    if (starts(L, k, "output_token_ids: ")) {
        la = k + 18;
        if (starts(L, la, "None")) lb = la + 4;
        else {
            lb = la;
            if (lb < n && CH(L, lb) == '[') {
                lb++;
                while (lb < n && (is_digit(CH(L, lb)) || CH(L, lb) == ',' || CH(L, lb) == ' ')) lb++;
                if (lb >= n || CH(L, lb) != ']') return DECLINE;
                lb++;
            } else return DECLINE;
        }
        if (!starts(L, lb, ", ")) return DECLINE;
        k = lb + 2;
    }
    if (!starts(L, k, "finish_reason: ")) return DECLINE;
    Py_ssize_t ra = k + 15, rb = ra;
    if (rb >= n || !(is_word(CH(L, rb)) && !is_digit(CH(L, rb)))) return DECLINE;
    while (rb < n && is_word(CH(L, rb))) rb++;
    if (rb != n || rb - ra > 61) return DECLINE;
    PyObject *data = PyDict_New();
    if (!data) return NULL;
    if (PyDict_SetItem(data, k_stream_info, g_info[info])) goto fail;
    if (la >= 0) {
        PyObject *ids, *count;
        int r = ids_or_none(L, la, lb, &ids, &count);
        if (r <= 0) { Py_DECREF(data); return r < 0 ? NULL : DECLINE; }
        r = PyDict_SetItem(data, k_output_token_ids, ids) || PyDict_SetItem(data, k_output_token_count, count);
        Py_DECREF(ids); Py_DECREF(count);
        if (r) goto fail;
    }
    PyObject *out = CH(L, a) == 'N' ? Py_NewRef(Py_None) : decode_literal(L, a, b);
    if (!out) { Py_DECREF(data); return DECLINE; }
    int r = PyDict_SetItem(data, k_output, out);
    Py_DECREF(out);
    if (r) goto fail;
    PyObject *reason = (rb - ra == 4 && starts(L, ra, "None")) ? Py_NewRef(Py_None) : PyUnicode_Substring(L->s, ra, rb);
    if (!reason) goto fail;
    r = PyDict_SetItem(data, k_finish_reason, reason);
    Py_DECREF(reason);
    if (r) goto fail;
    return event(g_kinds[K_OUTPUT], PyUnicode_Substring(L->s, i, rid_end), when, data);
fail:
    Py_DECREF(data);
    return NULL;
}

/* "Added request ID." / "Finished request ID." (messages._dotted_id) */
static PyObject *dotted(const Line *L, Py_ssize_t i, PyObject *kind, PyObject *when) {
    Py_ssize_t n = L->n;
    if (n - 1 <= i || CH(L, n - 1) != '.') return DECLINE;
    for (Py_ssize_t j = i; j < n - 1; j++)
        if (!is_graph(CH(L, j))) return DECLINE;
    return event(kind, PyUnicode_Substring(L->s, i, n - 1), when, PyDict_New());
}

static PyObject *details(const Line *L, Py_ssize_t i, PyObject *rid, PyObject *when) {
    Field fs[MAX_FIELDS];
    Py_ssize_t open = -1;
    Py_ssize_t n = L->n;
    if (CH(L, n - 1) != '.') goto decline;
    int nf = scan_fields(L, i, n - 1, fs, &open);
    if (nf < 0 || open >= 0) goto decline;
    PyObject *data = PyDict_New();
    if (!data) goto fail;
    int r = prompt_fields(L, fs, nf, data);
    if (r <= 0) { Py_DECREF(data); if (r < 0) goto fail; goto decline; }
    return event(g_kinds[K_DETAILS], rid, when, data);
decline:
    Py_DECREF(rid);
    return DECLINE;
fail:
    Py_DECREF(rid);
    return NULL;
}

static PyObject *received(const Line *L, Py_ssize_t i, PyObject *when) {
    Py_ssize_t n = L->n, k = i;
    while (k < n && !(CH(L, k) == ':' && k + 1 < n && CH(L, k + 1) == ' ')) {
        if (!is_graph(CH(L, k))) return DECLINE;
        k++;
    }
    if (k >= n || k == i || k + 2 > i + 2048 || CH(L, n - 1) != '.') return DECLINE;
    Field fs[MAX_FIELDS];
    Py_ssize_t open = -1;
    int nf = scan_fields(L, k + 2, n - 1, fs, &open);
    if (nf < 0) return DECLINE;
    Field *lora = find_field(L, fs, nf, "lora_request");
    if (lora && !(lora->b == lora->a + 4 && starts(L, lora->a, "None"))) return DECLINE;
    Field *p = find_field(L, fs, nf, "params");
    PyObject *params;
    if (p) {
        if (open < 0) return DECLINE;
        PyObject *f = Py_BuildValue("{O(nn)O(nn)}", k_params_open, open, p->b, k_params, p->a, p->b);
        if (!f) return NULL;
        params = PyObject_CallFunctionObjArgs(g_params_fn, L->s, f, NULL);
        Py_DECREF(f);
        if (!params) { PyErr_Clear(); return DECLINE; } /* ReprError: Python says malformed */
    } else {
        if (open >= 0) return DECLINE;
        params = PyDict_New();
        if (!params) return NULL;
    }
    PyObject *data = PyDict_New();
    if (!data) { Py_DECREF(params); return NULL; }
    int r = PyDict_SetItem(data, k_params, params);
    Py_DECREF(params);
    if (r) { Py_DECREF(data); return NULL; }
    r = prompt_fields(L, fs, nf, data);
    if (r <= 0) { Py_DECREF(data); return r < 0 ? NULL : DECLINE; }
    return event(g_received, PyUnicode_Substring(L->s, i, k), when, data);
}

static PyObject *dispatch(const Line *L, Py_ssize_t m, PyObject *h) {
    PyObject *when = PyTuple_GET_ITEM(h, 1), *file = PyTuple_GET_ITEM(h, 2);
    if (!PyUnicode_Check(file)) return DECLINE;
    if (starts(L, m, "Generated response ")) {
        return file_is(file, REQUEST_LOGGER_FILES) ? generated(L, m + 19, when) : DECLINE;
    }
    if (starts(L, m, "Received request ")) {
        return file_is(file, REQUEST_LOGGER_FILES) ? received(L, m + 17, when) : DECLINE;
    }
    if (starts(L, m, "Added request ")) {
        return file_is(file, ENGINE_FILES) ? dotted(L, m + 14, g_kinds[K_ADDED], when) : DECLINE;
    }
    if (starts(L, m, "Finished request ")) {
        return file_is(file, ENGINE_FILES) ? dotted(L, m + 17, g_kinds[K_FINISHED], when) : DECLINE;
    }
    if (starts(L, m, "Request ") && file_is(file, REQUEST_LOGGER_FILES)) {
        Py_ssize_t i = m + 8, k = i;
        while (k < L->n && k < i + 2048 && is_graph(CH(L, k))) k++;
        if (k == i || k >= L->n || k >= i + 2048 || CH(L, k) != ' ') return DECLINE;
        int is_details = starts(L, k, " details: ");
        if (!is_details && !starts(L, k, " JSON body: ")) return DECLINE;
        PyObject *rid = PyUnicode_Substring(L->s, i, k);
        if (!rid) return NULL;
        if (is_details) return details(L, k + 10, rid, when);
        /* the JSON decoding and type checks are Python's (one implementation) */
        PyObject *start = PyLong_FromSsize_t(k + 12);
        PyObject *r = start ? PyObject_CallFunctionObjArgs(g_body_fn, L->s, start, rid, when, NULL) : NULL;
        Py_XDECREF(start);
        Py_DECREF(rid);
        return r;
    }
    return DECLINE;
}

/* A uvicorn access line, "[(NAME pid=N) ]LEVEL:   CLIENT - "METHOD PATH
 * HTTP/V" STATUS...": what _parse returns when the header regex fails (it
 * must: LEVEL is followed by ":") and header.access_fields matches. */
static PyObject *access_line(const Line *L) {
    Py_ssize_t n = L->n, i = 0;
    if (CH(L, 0) == '(') { /* header._strip_proc */
        Py_ssize_t k = 1;
        while (k < n && CH(L, k) != ')' && CH(L, k) != '(') k++;
        if (k >= n || CH(L, k) != ')' || k + 2 > 100 || !starts(L, k, ") ")) return DECLINE;
        Py_ssize_t d = k;
        while (d - 1 > 0 && is_digit(CH(L, d - 1))) d--;
        if (d == k || d - 5 <= 1 || !starts(L, d - 5, " pid=")) return DECLINE;
        i = k + 2;
    }
    static const char *levels[] = {"DEBUG:", "INFO:", "WARNING:", "ERROR:", "CRITICAL:", "TRACE:"};
    int found = 0;
    for (int j = 0; j < 6; j++)
        if (starts(L, i, levels[j])) { i += (Py_ssize_t)strlen(levels[j]); found = 1; break; }
    if (!found) return DECLINE;
    Py_ssize_t sp = i;
    while (i < n && CH(L, i) == ' ') i++;
    if (i == sp || i - sp > 9) return DECLINE;
    Py_ssize_t ca = i;
    while (i < n && is_graph(CH(L, i))) i++;
    Py_ssize_t cb = i;
    if (cb == ca || cb - ca > 300 || !starts(L, i, " - \"")) return DECLINE;
    Py_ssize_t ma = i += 4;
    while (i < n && CH(L, i) >= 'A' && CH(L, i) <= 'Z') i++;
    Py_ssize_t mb = i;
    if (mb == ma || mb - ma > 16 || i >= n || CH(L, i) != ' ') return DECLINE;
    Py_ssize_t pa = ++i;
    while (i < n && is_graph(CH(L, i))) i++;
    Py_ssize_t pb = i;
    if (pb == pa || pb - pa > 8192 || !starts(L, i, " HTTP/")) return DECLINE;
    Py_ssize_t va = i += 6;
    while (i < n && (is_digit(CH(L, i)) || CH(L, i) == '.')) i++;
    if (i == va || i - va > 5 || !starts(L, i, "\" ")) return DECLINE;
    i += 2;
    if (i + 3 > n || !is_digit(CH(L, i)) || !is_digit(CH(L, i + 1)) || !is_digit(CH(L, i + 2))) return DECLINE;
    if (i + 3 < n && (is_word(CH(L, i + 3)) || CH(L, i + 3) >= 128)) return DECLINE; /* \b */
    int status = (int)(CH(L, i) - '0') * 100 + (int)(CH(L, i + 1) - '0') * 10 + (int)(CH(L, i + 2) - '0');
    PyObject *data = Py_BuildValue("{sNsNsNsi}", "client", PyUnicode_Substring(L->s, ca, cb), "method",
                                   PyUnicode_Substring(L->s, ma, mb), "path", PyUnicode_Substring(L->s, pa, pb),
                                   "status", status);
    if (!data) return NULL;
    PyObject *r = PyObject_CallFunctionObjArgs(g_event, g_access, Py_None, Py_None, data, NULL);
    Py_DECREF(data);
    return r;
}

static PyObject *scan(PyObject *self, PyObject *text) {
    if (!g_event) { PyErr_SetString(PyExc_RuntimeError, "_scan.configure() not called"); return NULL; }
    if (!PyUnicode_CheckExact(text)) Py_RETURN_NONE;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) return NULL;
#endif
    Line L = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), text};
    /* clean(): a trailing \r or an ANSI escape is the Python path's */
    if (L.n < 2 || CH(&L, L.n - 1) == '\r') Py_RETURN_NONE;
    Py_ssize_t esc = PyUnicode_FindChar(text, 0x1b, 0, L.n, 1);
    if (esc == -2) return NULL;
    if (esc != -1) Py_RETURN_NONE;
    Py_ssize_t m = header_end(&L);
    if (m < 0) {
        PyObject *r = access_line(&L);
        if (!r && !PyErr_Occurred()) Py_RETURN_NONE;
        return r;
    }
    PyObject *h = header_for(&L, m);
    if (!h) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 3) Py_RETURN_NONE;
    Py_INCREF(h);  /* the cache may be cleared by a callback */
    PyObject *r = dispatch(&L, m, h);
    Py_DECREF(h);
    if (!r && !PyErr_Occurred()) Py_RETURN_NONE;
    return r;
}

/* dispatch(message, header): messages._dispatch(message, 0, header) for a
 * message whose header came from elsewhere (the JSON formatter's object). */
static PyObject *dispatch_message(PyObject *self, PyObject *args) {
    PyObject *text, *h;
    if (!g_event) { PyErr_SetString(PyExc_RuntimeError, "_scan.configure() not called"); return NULL; }
    if (!PyArg_ParseTuple(args, "UO", &text, &h)) return NULL;
    if (!PyUnicode_CheckExact(text) || !PyTuple_Check(h) || PyTuple_GET_SIZE(h) < 3) Py_RETURN_NONE;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) return NULL;
#endif
    Line L = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), text};
    if (L.n < 2) Py_RETURN_NONE;
    Py_INCREF(h);
    PyObject *r = dispatch(&L, 0, h);
    Py_DECREF(h);
    if (!r && !PyErr_Occurred()) Py_RETURN_NONE;
    return r;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *event, *header_fn, *params_fn, *body_fn, *out, *out_details, *added, *finished, *det, *rec, *acc;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO", &event, &header_fn, &params_fn, &body_fn, &out, &out_details,
                          &added, &finished, &det, &rec, &acc))
        return NULL;
    Py_XSETREF(g_body_fn, Py_NewRef(body_fn));
    Py_XSETREF(g_access, Py_NewRef(acc));
    Py_XSETREF(g_event, Py_NewRef(event));
    Py_XSETREF(g_header_fn, Py_NewRef(header_fn));
    Py_XSETREF(g_params_fn, Py_NewRef(params_fn));
    Py_XSETREF(g_kinds[K_OUTPUT], Py_NewRef(out));
    Py_XSETREF(g_kinds[K_OUTPUT_DETAILS], Py_NewRef(out_details));
    Py_XSETREF(g_kinds[K_ADDED], Py_NewRef(added));
    Py_XSETREF(g_kinds[K_FINISHED], Py_NewRef(finished));
    Py_XSETREF(g_kinds[K_DETAILS], Py_NewRef(det));
    Py_XSETREF(g_received, Py_NewRef(rec));
    PyDict_Clear(g_headers);
    Py_RETURN_NONE;
}

static PyObject *clear_cache(PyObject *self, PyObject *unused) {
    PyDict_Clear(g_headers);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, "scan(text) -> Event | None (None: let the Python parser decide)"},
    {"dispatch", dispatch_message, METH_VARARGS,
     "dispatch(message, header) -> Event | Ignored | None (a message without its header line)"},
    {"configure", configure, METH_VARARGS, "configure(Event, header_fn, params_fn, body_fn, *kinds)"},
    {"clear_cache", clear_cache, METH_NOARGS, "forget the cached headers"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) {
    PyObject *mod = PyModule_Create(&module);
    if (!mod) return NULL;
    g_headers = PyDict_New();
#define KEY(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    KEY(k_stream_info, "stream_info");
    KEY(k_output_token_ids, "output_token_ids");
    KEY(k_output_token_count, "output_token_count");
    KEY(k_output, "output");
    KEY(k_finish_reason, "finish_reason");
    KEY(k_prompt, "prompt");
    KEY(k_prompt_token_ids, "prompt_token_ids");
    KEY(k_prompt_token_count, "prompt_token_count");
    KEY(k_params, "params");
    KEY(k_params_open, "params(");
    KEY(g_info[0], "");
    KEY(g_info[1], "delta");
    KEY(g_info[2], "complete");
    if (!g_headers) return NULL;
#ifndef SCAN_SOURCE_SHA256
#define SCAN_SOURCE_SHA256 ""
#endif
    /* setup.py compiles in the source's digest: fast.stale() compares it */
    if (PyModule_AddStringConstant(mod, "SOURCE_SHA256", SCAN_SOURCE_SHA256) < 0) return NULL;
    return mod;
}
