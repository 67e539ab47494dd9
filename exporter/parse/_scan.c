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
#include "_scan_common.h"
#include <structmember.h>
#include "_scan_repr.h"
#include "_scan_body.h"
#include "_scan_bodycheck.h"
#include "_scan_messages.h"
#include "_scan_json.h"

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

/* The headers used last, by a hash of their text: a hit costs no string
 * object (a line's header text as a key of g_headers would be one per
 * line). Each slot owns its key and Header; a slot is only a shortcut to
 * what g_headers said for exactly that text. */
#define RECENT_HEADERS 64
static struct { PyObject *key, *header; } g_recent[RECENT_HEADERS];

static void forget_recent(void) {
    for (int j = 0; j < RECENT_HEADERS; j++) {
        Py_CLEAR(g_recent[j].key);
        Py_CLEAR(g_recent[j].header);
    }
}

/* Only the header's last HASH_TAIL characters are hashed: they hold what
 * varies from line to line (level, time, file and line number), and a slot
 * is only a guess that same_text() checks, so a shared tail costs a miss,
 * never a wrong Header. */
#define HASH_TAIL 48
static size_t header_hash(const Line *L, Py_ssize_t m) {
    size_t h = 2166136261u;
    Py_ssize_t i = m > HASH_TAIL ? m - HASH_TAIL : 0;
    if (L->kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)L->data;
        for (; i < m; i++) h = (h ^ p[i]) * 16777619u;
    } else {
        for (; i < m; i++) h = (h ^ CH(L, i)) * 16777619u;
    }
    return h;
}

static int same_text(const Line *L, Py_ssize_t m, PyObject *key) {
    if (PyUnicode_GET_LENGTH(key) != m) return 0;
    int kind = PyUnicode_KIND(key);
    const void *data = PyUnicode_DATA(key);
    if (kind == L->kind) return memcmp(data, L->data, (size_t)m * (size_t)kind) == 0;
    for (Py_ssize_t i = 0; i < m; i++)
        if (PyUnicode_READ(kind, data, i) != CH(L, i)) return 0;
    return 1;
}

static PyObject *header_lookup(const Line *L, Py_ssize_t m, PyObject **key_out);

/* The Header for text[:m] (borrowed), or NULL with no error set to decline. */
static PyObject *header_for(const Line *L, Py_ssize_t m) {
    size_t slot = header_hash(L, m) % RECENT_HEADERS;
    if (g_recent[slot].key && same_text(L, m, g_recent[slot].key)) return g_recent[slot].header;
    PyObject *key = NULL;
    PyObject *h = header_lookup(L, m, &key);
    if (h && key) {
        Py_XSETREF(g_recent[slot].header, Py_NewRef(h));
        Py_XSETREF(g_recent[slot].key, key);  /* takes the reference */
        return g_recent[slot].header;
    }
    Py_XDECREF(key);
    return h;
}

/* header_for's g_headers part; *key_out gets a new reference to text[:m]
 * when a Header is returned. */
static PyObject *header_lookup(const Line *L, Py_ssize_t m, PyObject **key_out) {
    PyObject *key = PyUnicode_Substring(L->s, 0, m);
    if (!key) return NULL;
    PyObject *h = PyDict_GetItemWithError(g_headers, key);
    if (h) { *key_out = key; return h; }
    if (PyErr_Occurred()) { Py_DECREF(key); return NULL; }
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
    Py_DECREF(got);  /* the dict keeps h alive (borrowed by the caller) */
    if (bad) { Py_DECREF(key); return NULL; }
    *key_out = key;
    return h;
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

/* g_event_off for Event, or zeros (then events are made by calling Event).
 * ``plain``: the caller vouches that Event's __init__ is the generated one
 * of a slots dataclass (fast.plain_event), which only stores its arguments.
 * Then each of the four fields must be a writable object slot, Event's
 * __new__ object's, and one Event made by calling it must hold exactly its
 * arguments at those offsets: so allocating and filling is what the call
 * does. */
static int find_event_slots(PyObject *event, int plain) {
    static const char *names[4] = {"kind", "request_id", "when", "data"};
    Py_ssize_t off[4];
    memset(g_event_off, 0, sizeof g_event_off);
    if (!plain || !PyType_Check(event) || ((PyTypeObject *)event)->tp_new != PyBaseObject_Type.tp_new) return 0;
    int has_post = PyObject_HasAttrString(event, "__post_init__");
    if (has_post) return 0;
    for (int j = 0; j < 4; j++) {
        PyObject *d = PyObject_GetAttrString(event, names[j]);
        if (!d) { PyErr_Clear(); return 0; }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
                 !(((PyMemberDescrObject *)d)->d_member->flags & READONLY);
        off[j] = ok ? ((PyMemberDescrObject *)d)->d_member->offset : 0;
        Py_DECREF(d);
        if (off[j] <= 0) return 0;
    }
    PyObject *probe[4] = {PyUnicode_FromString("k"), PyUnicode_FromString("r"), PyTuple_New(0), PyDict_New()};
    PyObject *e = (probe[0] && probe[1] && probe[2] && probe[3])
                      ? PyObject_CallFunctionObjArgs(event, probe[0], probe[1], probe[2], probe[3], NULL)
                      : NULL;
    int same = e != NULL && Py_IS_TYPE(e, (PyTypeObject *)event);
    for (int j = 0; j < 4 && same; j++) same = *(PyObject **)((char *)e + off[j]) == probe[j];
    Py_XDECREF(e);
    for (int j = 0; j < 4; j++) Py_XDECREF(probe[j]);
    if (PyErr_Occurred()) return -1;
    if (same) memcpy(g_event_off, off, sizeof off);
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *event, *header_fn, *params_fn, *body_fn, *out, *out_details, *added, *finished, *det, *rec, *acc;
    PyObject *body = NULL; /* without it, every body event is body_fn's */
    int plain = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO|pO", &event, &header_fn, &params_fn, &body_fn, &out, &out_details,
                          &added, &finished, &det, &rec, &acc, &plain, &body))
        return NULL;
    Py_XSETREF(g_body_kind, Py_XNewRef(body));
    Py_XSETREF(g_body_fn, Py_NewRef(body_fn));
    Py_XSETREF(g_access, Py_NewRef(acc));
    Py_XSETREF(g_event, Py_NewRef(event));
    if (find_event_slots(event, plain) < 0) return NULL;
    Py_XSETREF(g_header_fn, Py_NewRef(header_fn));
    Py_XSETREF(g_params_fn, Py_NewRef(params_fn));
    Py_XSETREF(g_kinds[K_OUTPUT], Py_NewRef(out));
    Py_XSETREF(g_kinds[K_OUTPUT_DETAILS], Py_NewRef(out_details));
    Py_XSETREF(g_kinds[K_ADDED], Py_NewRef(added));
    Py_XSETREF(g_kinds[K_FINISHED], Py_NewRef(finished));
    Py_XSETREF(g_kinds[K_DETAILS], Py_NewRef(det));
    Py_XSETREF(g_received, Py_NewRef(rec));
    PyDict_Clear(g_headers);
    forget_recent();
    Py_RETURN_NONE;
}

static PyObject *direct_events(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(g_event_off[0] != 0);
}

static PyObject *clear_cache(PyObject *self, PyObject *unused) {
    PyDict_Clear(g_headers);
    forget_recent();
    Py_RETURN_NONE;
}

static PyObject *body_project_py(PyObject *self, PyObject *args) { /* for tests/test_body_project.py */
    PyObject *text;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "Un", &text, &start)) return NULL;
    Line L = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), text};
    PyObject *r = start >= 0 ? body_project(&L, start) : NULL;
    return r ? r : Py_NewRef(Py_None);
}

static PyObject *body_data_py(PyObject *self, PyObject *args) { /* for tests/test_body_check_c.py */
    PyObject *text;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "Un", &text, &start)) return NULL;
    Line L = {PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text), text};
    PyObject *body = start >= 0 ? body_project(&L, start) : NULL;
    PyObject *r = body ? body_data(&L, start, body) : NULL;
    Py_XDECREF(body);
    return r ? r : Py_NewRef(Py_None);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, "scan(text) -> Event | None (None: let the Python parser decide)"},
    {"dispatch", dispatch_message, METH_VARARGS,
     "dispatch(message, header) -> Event | Ignored | None (a message without its header line)"},
    {"configure", configure, METH_VARARGS, "configure(Event, header_fn, params_fn, body_fn, *kinds[, plain[, BODY]])"},
    {"clear_cache", clear_cache, METH_NOARGS, "forget the cached headers"},
    {"direct_events", direct_events, METH_NOARGS, "whether events are allocated without calling Event()"},
    {"body_project", body_project_py, METH_VARARGS,
     "body_project(text, start) -> dict | None: check_body's members of the JSON body at start (None: ask json)"},
    {"body_data", body_data_py, METH_VARARGS,
     "body_data(text, start) -> dict | None: body_event's data of the JSON body at start (None: ask body_event)"},
    {"json_line", json_line, METH_VARARGS,
     "json_line(obj, sort_keys, text) -> bytes | str | None: compact JSON as json writes it (None: ask json)"},
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
    KEY(k_body, "body");
    KEY(k_raw_len, "raw_len");
    KEY(k_truncated_body, "truncated_body");
    KEY(k_problems, "problems");
    KEY(k_input_flags, "input_flags");
    KEY(k_invalid_field, "invalid_field");
    KEY(k_body_invalid_field, "body_invalid_field");
    KEY(k_response_format, "response_format");
    KEY(k_text, "text");
    KEY(k_format, "format");
    KEY(k_type, "type");
    for (int j = 0; j < BODY_FIELDS; j++) KEY(k_body_fields[j], BODY_CHECKS[j].name);
    if (!g_headers) return NULL;
#ifndef SCAN_SOURCE_SHA256
#define SCAN_SOURCE_SHA256 ""
#endif
    /* setup.py compiles in the source's digest: fast.stale() compares it */
    if (PyModule_AddStringConstant(mod, "SOURCE_SHA256", SCAN_SOURCE_SHA256) < 0) return NULL;
    return mod;
}
