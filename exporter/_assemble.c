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
 * tests/test_assemble_differential.py holds the two equal, order and types. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>

static PyObject *blank, *format_ts, *prefixes;  /* set by configure() */
static PyObject *engine_fields;
static PyObject *s_log, *s_engine, *s_logged_ids, *s_user_field, *s_index, *s_text, *s_finish_reason,
    *s_aborted, *s_error, *s_completed, *s_incomplete, *s_abort, *s_round, *s_one, *s_six,
    *s_prompt_truncated, *s_output_truncated, *s_oversized_input, *s_middleware_missing;
#define K(name) static PyObject *k_##name;
K(mw) K(summary) K(received) K(details) K(outputs) K(complete) K(deltas) K(failed) K(out_ids)
K(body) K(cfg) K(max_log_len) K(instance) K(sources) K(received_t) K(first_t) K(ts) K(log_id)
K(key) K(request_id) K(endpoint) K(model) K(user) K(identity_source) K(stream) K(prompt)
K(last_finish) K(text) K(finish_reason) K(ids) K(output) K(choices) K(params) K(response_format)
K(format) K(max_completion_tokens) K(max_tokens) K(max_output_tokens) K(temperature) K(n)
K(json_mode) K(type) K(prompt_token_ids) K(prompt_tokens) K(out_ids_truncated) K(delta_ids_known)
K(delta_ids) K(completion_tokens) K(tokens_source) K(done_t) K(status) K(empty_response)
K(precise) K(latency_seconds) K(error) K(input_flags) K(flags) K(engine) K(aborted)
#undef K

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

static PyObject *limit_of(PyObject *limit, long long *out) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(limit, &overflow);
    if (v == -1 && PyErr_Occurred()) return NULL;
    *out = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : v;
    return limit;
}

typedef struct { PyObject *text, *finish, *ids; } choice;
#define MAXCH 64

static PyObject *build_impl(PyObject *e, PyObject *instance, PyObject *ctx_model, PyObject *limit,
                            PyObject *oversized, int mw_seen, int can_count);

static PyObject *build(PyObject *self, PyObject *args) {
    PyObject *e, *instance, *model, *limit, *oversized, *count_tokens;
    int mw_seen;
    if (!PyArg_ParseTuple(args, "OOOOOpO", &e, &instance, &model, &limit, &oversized, &mw_seen, &count_tokens))
        return NULL;
    if (blank == NULL || !PyDict_CheckExact(e)) Py_RETURN_NONE;
    int can = PyObject_IsTrue(count_tokens);
    if (can < 0) return NULL;
    PyObject *r = build_impl(e, instance, model, limit, oversized, mw_seen, can);
    if (r == DECLINE) Py_RETURN_NONE;
    return r;
}

#define CHECK(v) do { if ((v) == NULL) goto fail; if ((v) == DECLINE) goto decline; } while (0)
#define REQUIRE(c) do { if (!(c)) goto decline; } while (0)
#define SET(d, k, v) do { if (PyDict_SetItem((d), (k), (v)) < 0) goto fail; } while (0)

static PyObject *build_impl(PyObject *e, PyObject *instance, PyObject *ctx_model, PyObject *limit_obj,
                            PyObject *oversized, int mw_seen, int can_count) {
    PyObject *rec = NULL, *flags = NULL, *sources = NULL, *params = NULL, *tmp = NULL, *pt = NULL, *ct = NULL;
    PyObject *mw, *summary, *received, *details, *outputs, *complete, *deltas, *failed, *out_ids, *body;
    PyObject *cfg, *v;
    int t;
    choice ch[MAXCH];
    Py_ssize_t nch = 0;

    mw = get(e, k_mw); CHECK(mw); REQUIRE(mw == Py_None);
    summary = get(e, k_summary); CHECK(summary); REQUIRE(summary == Py_None);
    received = need(e, k_received); CHECK(received); REQUIRE(NONE_OR(received, is_dict));
    details = need(e, k_details); CHECK(details); REQUIRE(NONE_OR(details, is_dict));
    outputs = need(e, k_outputs); CHECK(outputs); REQUIRE(PyList_CheckExact(outputs));
    complete = need(e, k_complete); CHECK(complete); REQUIRE(PyList_CheckExact(complete));
    deltas = need(e, k_deltas); CHECK(deltas); REQUIRE(is_int(deltas));
    v = need(e, k_aborted); CHECK(v); REQUIRE(is_bool(v));
    int aborted = v == Py_True;
    failed = need(e, k_failed); CHECK(failed); REQUIRE(NONE_OR(failed, is_str));
    out_ids = need(e, k_out_ids); CHECK(out_ids); REQUIRE(NONE_OR(out_ids, is_int));
    int ndeltas = PyObject_IsTrue(deltas);
    if (ndeltas < 0) goto fail;
    int has_log = (received != Py_None && PyDict_GET_SIZE(received)) || (details != Py_None && PyDict_GET_SIZE(details))
                  || PyList_GET_SIZE(outputs) || PyList_GET_SIZE(complete) || ndeltas || aborted
                  || (failed != Py_None && PyUnicode_GET_LENGTH(failed)) || out_ids != Py_None;
    REQUIRE(has_log);  /* no request behind it: Python's None */
    body = need(e, k_body); CHECK(body);
    if (!PyDict_CheckExact(body)) {
        REQUIRE(!PyDict_Check(body));
        body = NULL;
    }
    cfg = get(e, k_cfg); CHECK(cfg); REQUIRE(NONE_OR(cfg, is_dict));
    if (cfg != Py_None && PyDict_GET_SIZE(cfg) == 0) cfg = Py_None;
    PyObject *limit = limit_obj;
    if (limit == Py_None && cfg != Py_None) {
        limit = get(cfg, k_max_log_len); CHECK(limit);
    }
    REQUIRE(NONE_OR(limit, is_int));
    long long lim = 0;
    if (limit != Py_None && limit_of(limit, &lim) == NULL) goto fail;
#define CUT(s) (limit != Py_None && (s) != Py_None && (long long)PyUnicode_GET_LENGTH(s) >= lim)

    if ((flags = PyList_New(0)) == NULL) goto fail;
    if ((rec = PyDict_Copy(blank)) == NULL) goto fail;
    SET(rec, k_instance, instance);
    if ((sources = PyList_New(1)) == NULL) goto fail;
    Py_INCREF(s_log);
    PyList_SET_ITEM(sources, 0, s_log);
    SET(rec, k_sources, sources);

    /* -- identity */
    PyObject *rt = need(e, k_received_t); CHECK(rt); REQUIRE(NONE_OR(rt, is_float));
    PyObject *ft = need(e, k_first_t); CHECK(ft); REQUIRE(NONE_OR(ft, is_float));
    PyObject *when = rt != Py_None && PyFloat_AS_DOUBLE(rt) != 0.0 ? rt : ft;
    if (when != Py_None) {
        REQUIRE(isfinite(PyFloat_AS_DOUBLE(when)));
        if ((tmp = PyObject_CallOneArg(format_ts, when)) == NULL) goto fail;
        SET(rec, k_ts, tmp);
        Py_CLEAR(tmp);
    }
    PyObject *log_id = need(e, k_log_id); CHECK(log_id); REQUIRE(NONE_OR(log_id, is_str));
    if (log_id != Py_None && PyUnicode_GET_LENGTH(log_id)) {
        SET(rec, k_request_id, log_id);
    } else {
        v = need(e, k_key); CHECK(v);
        SET(rec, k_request_id, v);
    }
    PyObject *endpoint = Py_None;
    if (log_id != Py_None && PyUnicode_GET_LENGTH(log_id)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
            PyObject *pair = PyTuple_GET_ITEM(prefixes, i);
            Py_ssize_t m = PyUnicode_Tailmatch(log_id, PyTuple_GET_ITEM(pair, 0), 0, PY_SSIZE_T_MAX, -1);
            if (m < 0) goto fail;
            if (m) { endpoint = PyTuple_GET_ITEM(pair, 1); break; }
        }
    }
    SET(rec, k_endpoint, endpoint);
    int ep_chat = eq_ascii(endpoint, "chat"), ep_cmpl = eq_ascii(endpoint, "completion");
    int ep_resp = eq_ascii(endpoint, "responses");
    /* model: the first true of body.model, ctx.model, cfg.model; else the last */
    {
        PyObject *cands[3];
        cands[0] = body != NULL ? get(body, k_model) : Py_None; CHECK(cands[0]);
        cands[1] = ctx_model;
        cands[2] = cfg != Py_None ? get(cfg, k_model) : Py_None; CHECK(cands[2]);
        PyObject *m = cands[2];
        for (int i = 0; i < 2; i++) {
            t = truth(cands[i]);
            REQUIRE(t >= 0);
            if (t) { m = cands[i]; break; }
        }
        SET(rec, k_model, m);
    }
    if (body != NULL) {
        v = get(body, k_user); CHECK(v);
        if (v != Py_None) {
            REQUIRE(is_str(v));
            SET(rec, k_user, v);
            SET(rec, k_identity_source, s_user_field);
        }
    }
    PyObject *stream = Py_None;
    if (body != NULL) {
        stream = get(body, k_stream); CHECK(stream);
        if (!PyBool_Check(stream)) {
            int has = PyDict_Contains(body, k_stream);
            if (has < 0) goto fail;
            stream = !has && (ep_chat || ep_cmpl || ep_resp) ? Py_False : Py_None;
        }
    }
    PyObject *e_stream = need(e, k_stream); CHECK(e_stream); REQUIRE(NONE_OR(e_stream, is_bool));
    SET(rec, k_stream, stream == Py_None ? e_stream : stream);

    /* -- prompt */
    PyObject *lp = details != Py_None && PyDict_GET_SIZE(details) ? get(details, k_prompt) : Py_None;
    CHECK(lp); REQUIRE(NONE_OR(lp, is_str));
    if (lp == Py_None || PyUnicode_GET_LENGTH(lp) == 0) {
        lp = received != Py_None && PyDict_GET_SIZE(received) ? get(received, k_prompt) : Py_None;
        CHECK(lp); REQUIRE(NONE_OR(lp, is_str));
    }
    SET(rec, k_prompt, lp);
    if (CUT(lp) && PyList_Append(flags, s_prompt_truncated) < 0) goto fail;

    /* -- output and choices */
    PyObject *last_finish = need(e, k_last_finish); CHECK(last_finish); REQUIRE(NONE_OR(last_finish, is_str));
    int from_outputs = PyList_GET_SIZE(outputs) != 0;
    PyObject *src = from_outputs ? outputs : complete;
    nch = PyList_GET_SIZE(src);
    REQUIRE(nch <= MAXCH);
    for (Py_ssize_t i = 0; i < nch; i++) {
        PyObject *o = PyList_GET_ITEM(src, i);
        if (from_outputs) {
            REQUIRE(PyDict_CheckExact(o));
            ch[i].text = need(o, k_text); CHECK(ch[i].text);
            ch[i].finish = need(o, k_finish_reason); CHECK(ch[i].finish);
            ch[i].ids = need(o, k_ids); CHECK(ch[i].ids);
            REQUIRE(NONE_OR(ch[i].ids, is_int));
        } else {
            ch[i].text = o;
            ch[i].finish = last_finish;
            ch[i].ids = Py_None;
            REQUIRE(NONE_OR(o, is_str));  /* before reading it as a str: anything else is Python's */
            if (o != Py_None && PyUnicode_GET_LENGTH(o) > 0)
                REQUIRE(PyUnicode_READ_CHAR(o, 0) != '<');  /* maybe vLLM's placeholder: Python reads it */
        }
        REQUIRE(NONE_OR(ch[i].text, is_str));
        REQUIRE(NONE_OR(ch[i].finish, is_str));
    }
    SET(rec, k_output, nch ? ch[0].text : Py_None);
    if (limit != Py_None) {
        for (Py_ssize_t i = 0; i < nch; i++)
            if (CUT(ch[i].text)) {
                if (PyList_Append(flags, s_output_truncated) < 0) goto fail;
                break;
            }
    }
    if (nch > 1) {
        if ((tmp = PyList_New(nch)) == NULL) goto fail;
        for (Py_ssize_t i = 0; i < nch; i++) {
            PyObject *c = PyDict_New(), *idx = PyLong_FromSsize_t(i);
            if (c == NULL || idx == NULL) { Py_XDECREF(c); Py_XDECREF(idx); goto fail; }
            PyList_SET_ITEM(tmp, i, c);
            int bad = PyDict_SetItem(c, s_index, idx) < 0 || PyDict_SetItem(c, k_text, ch[i].text) < 0 ||
                      PyDict_SetItem(c, k_finish_reason, ch[i].finish) < 0;
            Py_DECREF(idx);
            if (bad) goto fail;
        }
        SET(rec, k_choices, tmp);
        Py_CLEAR(tmp);
    }

    /* -- params: wire.params(body), its unknowns from vLLM's effective values */
    PyObject *eff = received != Py_None && PyDict_GET_SIZE(received) ? get(received, k_params) : Py_None;
    CHECK(eff);
    t = truth(eff); REQUIRE(t >= 0);
    if (!t) eff = NULL; else REQUIRE(PyDict_CheckExact(eff));
    PyObject *pv[4] = {Py_None, Py_None, Py_None, Py_None};
    PyObject *pk[4] = {k_max_tokens, k_temperature, k_n, k_json_mode};
    if (body != NULL) {
        PyObject *fmt = get(body, k_response_format); CHECK(fmt);
        if (fmt == Py_None) {
            PyObject *text = get(body, k_text); CHECK(text);
            if (PyDict_Check(text)) {
                REQUIRE(PyDict_CheckExact(text));
                fmt = get(text, k_format); CHECK(fmt);
            }
        }
        pv[0] = get(body, k_max_completion_tokens); CHECK(pv[0]);
        if (pv[0] == Py_None) { pv[0] = get(body, k_max_tokens); CHECK(pv[0]); }
        if (pv[0] == Py_None) { pv[0] = get(body, k_max_output_tokens); CHECK(pv[0]); }
        pv[1] = get(body, k_temperature); CHECK(pv[1]);
        pv[2] = get(body, k_n); CHECK(pv[2]);
        PyObject *kind = Py_None;
        if (PyDict_Check(fmt)) {
            REQUIRE(PyDict_CheckExact(fmt));
            kind = get(fmt, k_type); CHECK(kind);
        }
        REQUIRE(plain(kind));
        pv[3] = eq_ascii(kind, "json_object") || eq_ascii(kind, "json_schema") ? Py_True : Py_False;
    }
    if ((params = PyDict_New()) == NULL) goto fail;
    for (int i = 0; i < 4; i++) {
        v = pv[i];
        if (v == Py_None && eff != NULL) { v = get(eff, pk[i]); CHECK(v); }
        if (i == 2 && v == Py_None && body != NULL && (ep_chat || ep_cmpl)) v = s_one;
        SET(params, pk[i], v);
    }
    PyObject *n_param = PyDict_GetItem(params, k_n);  /* borrowed, set above */
    REQUIRE(plain(n_param));
    SET(rec, k_params, params);

    /* -- tokens */
    const char *pt_how = NULL, *ct_how = NULL;
    PyObject *ids = details != Py_None && PyDict_GET_SIZE(details) ? get(details, k_prompt_token_ids) : Py_None;
    CHECK(ids);
    if (ids == Py_None && received != Py_None && PyDict_GET_SIZE(received)) {
        ids = get(received, k_prompt_token_ids); CHECK(ids);
    }
    if (ids == Py_None) {
        Py_INCREF(Py_None); pt = Py_None;
    } else if (PyLong_CheckExact(ids)) {
        Py_INCREF(ids); pt = ids;
    } else {
        REQUIRE(PyList_CheckExact(ids));
        if ((pt = PyLong_FromSsize_t(PyList_GET_SIZE(ids))) == NULL) goto fail;
    }
    if (pt != Py_None) {
        int cut = 0;
        if (limit != Py_None && (cut = PyObject_RichCompareBool(pt, limit, Py_GE)) < 0) goto fail;
        if (cut) { Py_DECREF(pt); Py_INCREF(Py_None); pt = Py_None; }
        else pt_how = "logged_ids";
    }
    if (pt == Py_None && can_count && lp != Py_None && !CUT(lp)) goto decline;  /* the tokenizer's */
    SET(rec, k_prompt_tokens, pt);

    /* _completion_from_log */
    PyObject *trunc = get(e, k_out_ids_truncated); CHECK(trunc);
    t = truth(trunc); REQUIRE(t >= 0);
    int known = 1;
    for (Py_ssize_t i = 0; i < nch; i++) if (ch[i].ids == Py_None) known = 0;
    int n_ok = 1;
    if (n_param != Py_None) {
        if ((tmp = PyLong_FromSsize_t(nch)) == NULL) goto fail;
        n_ok = PyObject_RichCompareBool(n_param, tmp, Py_EQ);
        Py_CLEAR(tmp);
        if (n_ok < 0) goto fail;
    }
    PyObject *delta_known = need(e, k_delta_ids_known); CHECK(delta_known); REQUIRE(is_bool(delta_known));
    if (out_ids != Py_None && !t) {
        Py_INCREF(out_ids); ct = out_ids; ct_how = "logged_ids";
    } else {
        int max_ok = 1;
        if (from_outputs && known && n_ok && limit != Py_None) {
            for (Py_ssize_t i = 0; i < nch && max_ok; i++) {
                int lt = PyObject_RichCompareBool(ch[i].ids, limit, Py_LT);
                if (lt < 0) goto fail;
                max_ok = lt;
            }
        }
        if ((from_outputs && known && n_ok && max_ok) || (!(e_stream == Py_True && ndeltas && delta_known == Py_True)
                                                          && nch && known)) {
            if ((ct = PyLong_FromLong(0)) == NULL) goto fail;
            for (Py_ssize_t i = 0; i < nch; i++) {
                PyObject *s = PyNumber_Add(ct, ch[i].ids);
                Py_DECREF(ct);
                if ((ct = s) == NULL) goto fail;
            }
            ct_how = "logged_ids";
        } else if (e_stream == Py_True && ndeltas && delta_known == Py_True) {
            v = need(e, k_delta_ids); CHECK(v);
            Py_INCREF(v);
            ct = v;
            ct_how = ct == Py_None ? NULL : "logged_ids";
        } else {
            if (can_count && nch) goto decline;  /* the tokenizer's */
            Py_INCREF(Py_None); ct = Py_None;
        }
    }
    SET(rec, k_completion_tokens, ct);
    SET(rec, k_tokens_source, pt_how || ct_how ? s_logged_ids : Py_None);

    /* -- outcome */
    PyObject *done_t = need(e, k_done_t); CHECK(done_t);
    PyObject *status = aborted ? s_aborted : failed != Py_None && PyUnicode_GET_LENGTH(failed) ? s_error
                       : done_t != Py_None ? s_completed : s_incomplete;
    SET(rec, k_status, status);
    PyObject *finish = nch ? ch[0].finish : Py_None;
    if (eq_ascii(finish, "streaming_complete") || eq_ascii(finish, "None")) finish = Py_None;
    if (finish == Py_None && e_stream == Py_True && last_finish != Py_None && PyUnicode_GET_LENGTH(last_finish))
        finish = last_finish;
    if (finish == Py_None && status == s_aborted) finish = s_abort;
    SET(rec, k_finish_reason, finish);
    if (status == s_completed && nch) {
        int empty = 1;
        for (Py_ssize_t i = 0; i < nch && empty; i++)
            empty = ch[i].text != Py_None && PyUnicode_GET_LENGTH(ch[i].text) == 0;
        SET(rec, k_empty_response, empty ? Py_True : Py_False);
    }
    PyObject *precise = need(e, k_precise); CHECK(precise); REQUIRE(is_bool(precise));
    if (precise == Py_True && rt != Py_None && done_t != Py_None) {
        REQUIRE(PyFloat_CheckExact(done_t));
        double d = PyFloat_AS_DOUBLE(done_t) - PyFloat_AS_DOUBLE(rt);
        PyObject *f = PyFloat_FromDouble(d > 0.0 ? d : 0.0);  /* max(0.0, d): 0.0 for NaN too */
        if (f == NULL) goto fail;
        tmp = PyObject_CallMethodObjArgs(f, s_round, s_six, NULL);
        Py_DECREF(f);
        if (tmp == NULL) goto fail;
        SET(rec, k_latency_seconds, tmp);
        Py_CLEAR(tmp);
    }
    if (failed != Py_None && PyUnicode_GET_LENGTH(failed)) SET(rec, k_error, failed);

    /* -- flags */
    if (pt != Py_None) {
        int big = PyObject_RichCompareBool(pt, oversized, Py_GT);
        if (big < 0) goto fail;
        if (big && PyList_Append(flags, s_oversized_input) < 0) goto fail;
    }
    if (mw_seen && PyList_Append(flags, s_middleware_missing) < 0) goto fail;
    if (body != NULL) {
        PyObject *in = get(body, k_input_flags); CHECK(in);
        t = truth(in); REQUIRE(t >= 0);
        if (t) {
            REQUIRE(PyList_CheckExact(in));
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(in); i++) {
                PyObject *f = PyList_GET_ITEM(in, i);
                REQUIRE(PyUnicode_CheckExact(f));
                int has = PySequence_Contains(flags, f);
                if (has < 0) goto fail;
                if (!has && PyList_Append(flags, f) < 0) goto fail;
            }
        }
    }
    SET(rec, k_flags, flags);

    /* -- engine */
    PyObject *engine = get(e, k_engine); CHECK(engine);
    if (engine != Py_None) {
        REQUIRE(PyDict_CheckExact(engine));
        if ((tmp = PyDict_New()) == NULL) goto fail;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(engine_fields); i++) {
            PyObject *k = PyTuple_GET_ITEM(engine_fields, i);
            v = get(engine, k); CHECK(v);
            SET(tmp, k, v);
        }
        SET(rec, k_engine, tmp);
        Py_CLEAR(tmp);
        if (PyList_Append(sources, s_engine) < 0) goto fail;
    }
    Py_DECREF(flags); Py_DECREF(sources); Py_DECREF(params); Py_DECREF(pt); Py_DECREF(ct);
    return rec;
decline:
    Py_XDECREF(rec); Py_XDECREF(flags); Py_XDECREF(sources); Py_XDECREF(params); Py_XDECREF(tmp);
    Py_XDECREF(pt); Py_XDECREF(ct);
    return DECLINE;
fail:
    Py_XDECREF(rec); Py_XDECREF(flags); Py_XDECREF(sources); Py_XDECREF(params); Py_XDECREF(tmp);
    Py_XDECREF(pt); Py_XDECREF(ct);
    return NULL;
}

static int init_names(void) {
    if ((k_mw = PyUnicode_InternFromString("mw")) == NULL) return -1;
    if ((k_summary = PyUnicode_InternFromString("summary")) == NULL) return -1;
    if ((k_received = PyUnicode_InternFromString("received")) == NULL) return -1;
    if ((k_details = PyUnicode_InternFromString("details")) == NULL) return -1;
    if ((k_outputs = PyUnicode_InternFromString("outputs")) == NULL) return -1;
    if ((k_complete = PyUnicode_InternFromString("complete")) == NULL) return -1;
    if ((k_deltas = PyUnicode_InternFromString("deltas")) == NULL) return -1;
    if ((k_failed = PyUnicode_InternFromString("failed")) == NULL) return -1;
    if ((k_out_ids = PyUnicode_InternFromString("out_ids")) == NULL) return -1;
    if ((k_body = PyUnicode_InternFromString("body")) == NULL) return -1;
    if ((k_cfg = PyUnicode_InternFromString("cfg")) == NULL) return -1;
    if ((k_max_log_len = PyUnicode_InternFromString("max_log_len")) == NULL) return -1;
    if ((k_instance = PyUnicode_InternFromString("instance")) == NULL) return -1;
    if ((k_sources = PyUnicode_InternFromString("sources")) == NULL) return -1;
    if ((k_received_t = PyUnicode_InternFromString("received_t")) == NULL) return -1;
    if ((k_first_t = PyUnicode_InternFromString("first_t")) == NULL) return -1;
    if ((k_ts = PyUnicode_InternFromString("ts")) == NULL) return -1;
    if ((k_log_id = PyUnicode_InternFromString("log_id")) == NULL) return -1;
    if ((k_key = PyUnicode_InternFromString("key")) == NULL) return -1;
    if ((k_request_id = PyUnicode_InternFromString("request_id")) == NULL) return -1;
    if ((k_endpoint = PyUnicode_InternFromString("endpoint")) == NULL) return -1;
    if ((k_model = PyUnicode_InternFromString("model")) == NULL) return -1;
    if ((k_user = PyUnicode_InternFromString("user")) == NULL) return -1;
    if ((k_identity_source = PyUnicode_InternFromString("identity_source")) == NULL) return -1;
    if ((k_stream = PyUnicode_InternFromString("stream")) == NULL) return -1;
    if ((k_prompt = PyUnicode_InternFromString("prompt")) == NULL) return -1;
    if ((k_last_finish = PyUnicode_InternFromString("last_finish")) == NULL) return -1;
    if ((k_text = PyUnicode_InternFromString("text")) == NULL) return -1;
    if ((k_finish_reason = PyUnicode_InternFromString("finish_reason")) == NULL) return -1;
    if ((k_ids = PyUnicode_InternFromString("ids")) == NULL) return -1;
    if ((k_output = PyUnicode_InternFromString("output")) == NULL) return -1;
    if ((k_choices = PyUnicode_InternFromString("choices")) == NULL) return -1;
    if ((k_params = PyUnicode_InternFromString("params")) == NULL) return -1;
    if ((k_response_format = PyUnicode_InternFromString("response_format")) == NULL) return -1;
    if ((k_format = PyUnicode_InternFromString("format")) == NULL) return -1;
    if ((k_max_completion_tokens = PyUnicode_InternFromString("max_completion_tokens")) == NULL) return -1;
    if ((k_max_tokens = PyUnicode_InternFromString("max_tokens")) == NULL) return -1;
    if ((k_max_output_tokens = PyUnicode_InternFromString("max_output_tokens")) == NULL) return -1;
    if ((k_temperature = PyUnicode_InternFromString("temperature")) == NULL) return -1;
    if ((k_n = PyUnicode_InternFromString("n")) == NULL) return -1;
    if ((k_json_mode = PyUnicode_InternFromString("json_mode")) == NULL) return -1;
    if ((k_type = PyUnicode_InternFromString("type")) == NULL) return -1;
    if ((k_prompt_token_ids = PyUnicode_InternFromString("prompt_token_ids")) == NULL) return -1;
    if ((k_prompt_tokens = PyUnicode_InternFromString("prompt_tokens")) == NULL) return -1;
    if ((k_out_ids_truncated = PyUnicode_InternFromString("out_ids_truncated")) == NULL) return -1;
    if ((k_delta_ids_known = PyUnicode_InternFromString("delta_ids_known")) == NULL) return -1;
    if ((k_delta_ids = PyUnicode_InternFromString("delta_ids")) == NULL) return -1;
    if ((k_completion_tokens = PyUnicode_InternFromString("completion_tokens")) == NULL) return -1;
    if ((k_tokens_source = PyUnicode_InternFromString("tokens_source")) == NULL) return -1;
    if ((k_done_t = PyUnicode_InternFromString("done_t")) == NULL) return -1;
    if ((k_status = PyUnicode_InternFromString("status")) == NULL) return -1;
    if ((k_empty_response = PyUnicode_InternFromString("empty_response")) == NULL) return -1;
    if ((k_precise = PyUnicode_InternFromString("precise")) == NULL) return -1;
    if ((k_latency_seconds = PyUnicode_InternFromString("latency_seconds")) == NULL) return -1;
    if ((k_error = PyUnicode_InternFromString("error")) == NULL) return -1;
    if ((k_input_flags = PyUnicode_InternFromString("input_flags")) == NULL) return -1;
    if ((k_flags = PyUnicode_InternFromString("flags")) == NULL) return -1;
    if ((k_engine = PyUnicode_InternFromString("engine")) == NULL) return -1;
    if ((k_aborted = PyUnicode_InternFromString("aborted")) == NULL) return -1;
    if ((s_log = PyUnicode_InternFromString("vllm_log")) == NULL) return -1;
    if ((s_engine = PyUnicode_InternFromString("engine")) == NULL) return -1;
    if ((s_logged_ids = PyUnicode_InternFromString("logged_ids")) == NULL) return -1;
    if ((s_user_field = PyUnicode_InternFromString("user_field")) == NULL) return -1;
    if ((s_index = PyUnicode_InternFromString("index")) == NULL) return -1;
    if ((s_text = PyUnicode_InternFromString("text")) == NULL) return -1;
    if ((s_finish_reason = PyUnicode_InternFromString("finish_reason")) == NULL) return -1;
    if ((s_aborted = PyUnicode_InternFromString("aborted")) == NULL) return -1;
    if ((s_error = PyUnicode_InternFromString("error")) == NULL) return -1;
    if ((s_completed = PyUnicode_InternFromString("completed")) == NULL) return -1;
    if ((s_incomplete = PyUnicode_InternFromString("incomplete")) == NULL) return -1;
    if ((s_abort = PyUnicode_InternFromString("abort")) == NULL) return -1;
    if ((s_round = PyUnicode_InternFromString("__round__")) == NULL) return -1;
    if ((s_prompt_truncated = PyUnicode_InternFromString("prompt_truncated")) == NULL) return -1;
    if ((s_output_truncated = PyUnicode_InternFromString("output_truncated")) == NULL) return -1;
    if ((s_oversized_input = PyUnicode_InternFromString("oversized_input")) == NULL) return -1;
    if ((s_middleware_missing = PyUnicode_InternFromString("middleware_missing")) == NULL) return -1;
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
