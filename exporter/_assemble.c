/* build_record's log-only case in C (exporter/assemble.py is the reference).
 *
 * build(e, instance, model, max_log_len, oversized, middleware_seen,
 *       count_tokens) -> the record, or None to decline (then Python runs).
 * Taken only for an entry without the middleware line and without a Rust
 * frontend summary, whose fields hold the types the correlator stores (exact
 * dicts, lists, str, int, float, bool); anything else -- a stream's
 * "<streaming_complete: N tokens>" placeholder, a count that would need the
 * tokenizer, an entry with no log at all -- declines. The record is a copy of
 * assemble._BLANK_RECORD, so its keys keep the contract's order; params,
 * choices and engine are built in the order the Python builds them.
 * tests/test_assemble_differential.py and tests/test_assemble_c.py hold the
 * two equal, order and types.
 *
 * One translation unit in three parts: this file (names, the build's state,
 * the driver, the module), _assemble_request.h (the entry checked, identity,
 * prompt, output, params) and _assemble_outcome.h (tokens, outcome, flags,
 * engine). setup.py and assemble.py hash all three. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>

static PyObject *blank, *format_ts, *prefixes, *engine_fields;  /* set by configure() */

/* The entry's and the record's keys, each interned once as k_<name>. */
#define KEYS(X)                                                                                              \
    X(mw) X(summary) X(received) X(details) X(outputs) X(complete) X(deltas) X(failed) X(out_ids) X(body)      \
    X(cfg) X(max_log_len) X(instance) X(sources) X(received_t) X(first_t) X(ts) X(log_id) X(key)               \
    X(request_id) X(endpoint) X(model) X(user) X(identity_source) X(stream) X(prompt) X(last_finish) X(text)  \
    X(finish_reason) X(ids) X(output) X(choices) X(params) X(response_format) X(format)                      \
    X(max_completion_tokens) X(max_tokens) X(max_output_tokens) X(temperature) X(n) X(json_mode) X(type)     \
    X(prompt_token_ids) X(prompt_tokens) X(out_ids_truncated) X(delta_ids_known) X(delta_ids)                \
    X(completion_tokens) X(tokens_source) X(done_t) X(status) X(empty_response) X(precise)                   \
    X(latency_seconds) X(error) X(input_flags) X(flags) X(engine) X(aborted)
/* The values the record may hold, as s_<name> = "<text>". */
#define VALUES(X)                                                                                            \
    X(log, "vllm_log") X(engine, "engine") X(logged_ids, "logged_ids") X(user_field, "user_field")          \
    X(index, "index") X(aborted, "aborted") X(error, "error") X(completed, "completed")                      \
    X(incomplete, "incomplete") X(abort, "abort") X(round, "__round__") X(prompt_truncated, "prompt_truncated") \
    X(output_truncated, "output_truncated") X(oversized_input, "oversized_input")                           \
    X(middleware_missing, "middleware_missing")
#define DECLARE_KEY(name) static PyObject *k_##name;
#define DECLARE_VALUE(name, text) static PyObject *s_##name;
KEYS(DECLARE_KEY)
VALUES(DECLARE_VALUE)
static PyObject *s_one, *s_six;

#define DECLINE ((PyObject *)&decline_marker)
static PyObject decline_marker;  /* never a Python object: compared by address only */

/* e[key], or DECLINE when missing (Python would raise KeyError: let it). */
static PyObject *need(PyObject *d, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v == NULL && !PyErr_Occurred())
        return DECLINE;
    return v;
}

/* d.get(key) for an exact dict: borrowed, Py_None when absent. */
static PyObject *get(PyObject *d, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(d, key);
    return v == NULL && !PyErr_Occurred() ? Py_None : v;
}

#define NONE_OR(v, check) ((v) == Py_None || check(v))
static int is_int(PyObject *v) { return PyLong_CheckExact(v); }
static int is_str(PyObject *v) { return PyUnicode_CheckExact(v); }
static int is_dict(PyObject *v) { return PyDict_CheckExact(v); }
static int is_bool(PyObject *v) { return PyBool_Check(v); }
static int is_float(PyObject *v) { return PyFloat_CheckExact(v); }

/* Truth of a value of the plain types only (no __bool__ to run). */
static int truth(PyObject *v) {
    if (v == Py_None || v == Py_False) return 0;
    if (v == Py_True) return 1;
    if (PyUnicode_CheckExact(v)) return PyUnicode_GET_LENGTH(v) != 0;
    if (PyLong_CheckExact(v)) return PyObject_IsTrue(v);
    if (PyFloat_CheckExact(v)) return PyFloat_AS_DOUBLE(v) != 0.0;
    if (PyDict_CheckExact(v)) return PyDict_GET_SIZE(v) != 0;
    if (PyList_CheckExact(v)) return PyList_GET_SIZE(v) != 0;
    if (PyTuple_CheckExact(v)) return PyTuple_GET_SIZE(v) != 0;
    return -2;  /* another type: decline */
}

/* A plain value compared with a str by ==: only an exact str can be equal. */
static int plain(PyObject *v) {
    return v == Py_None || PyBool_Check(v) || PyLong_CheckExact(v) || PyFloat_CheckExact(v) ||
           PyUnicode_CheckExact(v) || PyDict_CheckExact(v) || PyList_CheckExact(v);
}
static int eq_ascii(PyObject *v, const char *s) {
    return PyUnicode_CheckExact(v) && PyUnicode_CompareWithASCIIString(v, s) == 0;
}

typedef struct { PyObject *text, *finish, *ids; } choice;
#define MAXCH 64

/* One build's state, passed through its steps. Every PyObject here is
 * borrowed (from the entry, or from a constant) except the ones marked
 * owned, which the driver releases whatever the outcome. */
typedef struct {
    PyObject *e, *instance, *ctx_model, *oversized;  /* the arguments */
    int mw_seen, can_count;
    PyObject *rec, *flags, *sources, *params, *pt, *ct, *tmp;  /* owned */
    /* the entry's fields, checked by check_entry */
    PyObject *received, *details, *outputs, *complete, *failed, *out_ids, *body, *cfg, *limit;
    long long lim;  /* limit as a C number (clamped), when limit is not None */
    int aborted, ndeltas;
    /* found on the way, read by later steps */
    PyObject *rt, *e_stream, *lp, *last_finish, *n_param;
    int ep_chat, ep_cmpl, ep_resp, from_outputs;
    choice ch[MAXCH];
    Py_ssize_t nch;
} build_t;

/* A step's outcome: go on, decline (Python builds it), or fail (an exception is set). */
enum { GO = 0, DECLINED = 1, FAILED = -1 };
#define CHECK(v) do { if ((v) == NULL) return FAILED; if ((v) == DECLINE) return DECLINED; } while (0)
#define REQUIRE(c) do { if (!(c)) return DECLINED; } while (0)
#define TRY(c) do { if ((c) < 0) return FAILED; } while (0)
#define SET(d, k, v) TRY(PyDict_SetItem((d), (k), (v)))

/* The text is at least max_log_len long: vLLM cut it there. */
static int cut(const build_t *b, PyObject *s) {
    return b->limit != Py_None && s != Py_None && (long long)PyUnicode_GET_LENGTH(s) >= b->lim;
}

#include "_assemble_request.h"
#include "_assemble_outcome.h"

/* In the order the Python builds the record: its keys are the blank
 * record's, but params, choices and engine get theirs in this order. */
static int (*const STEPS[])(build_t *) = {check_entry, start_record, identity, prompt, output, params,
                                          prompt_tokens, completion_tokens, outcome, flag_list, engine};

static PyObject *build(PyObject *self, PyObject *args) {
    build_t b = {0};
    PyObject *count_tokens;
    if (!PyArg_ParseTuple(args, "OOOOOpO", &b.e, &b.instance, &b.ctx_model, &b.limit, &b.oversized, &b.mw_seen,
                          &count_tokens))
        return NULL;
    if (blank == NULL || !PyDict_CheckExact(b.e)) Py_RETURN_NONE;
    if ((b.can_count = PyObject_IsTrue(count_tokens)) < 0) return NULL;
    int r = GO;
    for (size_t i = 0; r == GO && i < sizeof STEPS / sizeof STEPS[0]; i++)
        r = STEPS[i](&b);
    PyObject *rec = b.rec;
    if (r == GO) b.rec = NULL;  /* the caller's */
    Py_XDECREF(b.rec); Py_XDECREF(b.flags); Py_XDECREF(b.sources); Py_XDECREF(b.params);
    Py_XDECREF(b.pt); Py_XDECREF(b.ct); Py_XDECREF(b.tmp);
    if (r == FAILED) return NULL;
    if (r == DECLINED) Py_RETURN_NONE;
    return rec;
}

static int init_names(void) {
#define INIT_KEY(name) if ((k_##name = PyUnicode_InternFromString(#name)) == NULL) return -1;
#define INIT_VALUE(name, text) if ((s_##name = PyUnicode_InternFromString(text)) == NULL) return -1;
    KEYS(INIT_KEY)
    VALUES(INIT_VALUE)
    if ((s_one = PyLong_FromLong(1)) == NULL || (s_six = PyLong_FromLong(6)) == NULL) return -1;
    return 0;
}

/* configure(blank_record, format_ts, endpoint_by_prefix, engine_fields):
 * assemble.py's constants, so none is written twice. */
static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *b, *f, *p, *ef;
    if (!PyArg_ParseTuple(args, "O!OO!O!", &PyDict_Type, &b, &f, &PyTuple_Type, &p, &PyTuple_Type, &ef))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(p); i++) {
        PyObject *pair = PyTuple_GET_ITEM(p, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "endpoint_by_prefix: (prefix, endpoint) pairs");
            return NULL;
        }
    }
    Py_INCREF(b); Py_INCREF(f); Py_INCREF(p); Py_INCREF(ef);
    Py_XSETREF(blank, b); Py_XSETREF(format_ts, f); Py_XSETREF(prefixes, p); Py_XSETREF(engine_fields, ef);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS,
     "build(entry, instance, model, max_log_len, oversized, middleware_seen, count_tokens) -> record | None"},
    {"configure", configure, METH_VARARGS, "configure(blank_record, format_ts, endpoint_by_prefix, engine_fields)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_assemble", NULL, -1, methods};

PyMODINIT_FUNC PyInit__assemble(void) {
    if (init_names() < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
#ifdef ASSEMBLE_SOURCE_SHA256
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", ASSEMBLE_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
