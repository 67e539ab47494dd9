/* _assemble.c's first steps: the entry checked, then what was asked --
 * identity, prompt, output and choices, params. Included by _assemble.c
 * only (its names and build_t). Each step returns GO, DECLINED or FAILED. */

/* The entry's fields hold the types the correlator stores, and the entry
 * has a request behind it; every check before any allocation. */
static int check_entry(build_t *b) {
    PyObject *e = b->e, *v;
    v = get(e, k_mw); CHECK(v); REQUIRE(v == Py_None);
    v = get(e, k_summary); CHECK(v); REQUIRE(v == Py_None);
    b->received = need(e, k_received); CHECK(b->received); REQUIRE(NONE_OR(b->received, is_dict));
    b->details = need(e, k_details); CHECK(b->details); REQUIRE(NONE_OR(b->details, is_dict));
    b->outputs = need(e, k_outputs); CHECK(b->outputs); REQUIRE(PyList_CheckExact(b->outputs));
    b->complete = need(e, k_complete); CHECK(b->complete); REQUIRE(PyList_CheckExact(b->complete));
    PyObject *deltas = need(e, k_deltas); CHECK(deltas); REQUIRE(is_int(deltas));
    v = need(e, k_aborted); CHECK(v); REQUIRE(is_bool(v));
    b->aborted = v == Py_True;
    b->failed = need(e, k_failed); CHECK(b->failed); REQUIRE(NONE_OR(b->failed, is_str));
    b->out_ids = need(e, k_out_ids); CHECK(b->out_ids); REQUIRE(NONE_OR(b->out_ids, is_int));
    TRY(b->ndeltas = PyObject_IsTrue(deltas));
    int has_log = (b->received != Py_None && PyDict_GET_SIZE(b->received))
                  || (b->details != Py_None && PyDict_GET_SIZE(b->details)) || PyList_GET_SIZE(b->outputs)
                  || PyList_GET_SIZE(b->complete) || b->ndeltas || b->aborted
                  || (b->failed != Py_None && PyUnicode_GET_LENGTH(b->failed)) || b->out_ids != Py_None;
    REQUIRE(has_log);  /* no request behind it: Python's None */
    b->body = need(e, k_body); CHECK(b->body);
    if (!PyDict_CheckExact(b->body)) {
        REQUIRE(!PyDict_Check(b->body));  /* a dict subclass is Python's */
        b->body = NULL;
    }
    b->cfg = get(e, k_cfg); CHECK(b->cfg); REQUIRE(NONE_OR(b->cfg, is_dict));
    if (b->cfg != Py_None && PyDict_GET_SIZE(b->cfg) == 0) b->cfg = Py_None;
    if (b->limit == Py_None && b->cfg != Py_None) {
        b->limit = get(b->cfg, k_max_log_len); CHECK(b->limit);
    }
    REQUIRE(NONE_OR(b->limit, is_int));
    if (b->limit != Py_None) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(b->limit, &overflow);
        if (n == -1 && PyErr_Occurred()) return FAILED;
        b->lim = overflow > 0 ? LLONG_MAX : overflow < 0 ? LLONG_MIN : n;
    }
    return GO;
}

static int start_record(build_t *b) {
    if ((b->flags = PyList_New(0)) == NULL || (b->rec = PyDict_Copy(blank)) == NULL) return FAILED;
    SET(b->rec, k_instance, b->instance);
    if ((b->sources = PyList_New(1)) == NULL) return FAILED;
    Py_INCREF(s_log);
    PyList_SET_ITEM(b->sources, 0, s_log);
    SET(b->rec, k_sources, b->sources);
    return GO;
}

/* ts, request_id, endpoint, model, user, stream. */
static int identity(build_t *b) {
    PyObject *e = b->e, *rec = b->rec, *v;
    b->rt = need(e, k_received_t); CHECK(b->rt); REQUIRE(NONE_OR(b->rt, is_float));
    PyObject *ft = need(e, k_first_t); CHECK(ft); REQUIRE(NONE_OR(ft, is_float));
    PyObject *when = b->rt != Py_None && PyFloat_AS_DOUBLE(b->rt) != 0.0 ? b->rt : ft;
    if (when != Py_None) {
        REQUIRE(isfinite(PyFloat_AS_DOUBLE(when)));
        if ((b->tmp = PyObject_CallOneArg(format_ts, when)) == NULL) return FAILED;
        SET(rec, k_ts, b->tmp);
        Py_CLEAR(b->tmp);
    }
    PyObject *log_id = need(e, k_log_id); CHECK(log_id); REQUIRE(NONE_OR(log_id, is_str));
    int logged = log_id != Py_None && PyUnicode_GET_LENGTH(log_id);
    if (logged) {
        SET(rec, k_request_id, log_id);
    } else {
        v = need(e, k_key); CHECK(v);
        SET(rec, k_request_id, v);
    }
    PyObject *endpoint = Py_None;
    for (Py_ssize_t i = 0; logged && i < PyTuple_GET_SIZE(prefixes); i++) {
        PyObject *pair = PyTuple_GET_ITEM(prefixes, i);
        Py_ssize_t m = PyUnicode_Tailmatch(log_id, PyTuple_GET_ITEM(pair, 0), 0, PY_SSIZE_T_MAX, -1);
        TRY(m);
        if (m) { endpoint = PyTuple_GET_ITEM(pair, 1); break; }
    }
    SET(rec, k_endpoint, endpoint);
    b->ep_chat = eq_ascii(endpoint, "chat");
    b->ep_cmpl = eq_ascii(endpoint, "completion");
    b->ep_resp = eq_ascii(endpoint, "responses");
    /* model: the first true of body.model, ctx.model, cfg.model; else the last */
    PyObject *cands[3];
    cands[0] = b->body != NULL ? get(b->body, k_model) : Py_None; CHECK(cands[0]);
    cands[1] = b->ctx_model;
    cands[2] = b->cfg != Py_None ? get(b->cfg, k_model) : Py_None; CHECK(cands[2]);
    PyObject *model = cands[2];
    for (int i = 0; i < 2; i++) {
        int t = truth(cands[i]);
        REQUIRE(t >= 0);
        if (t) { model = cands[i]; break; }
    }
    SET(rec, k_model, model);
    PyObject *stream = Py_None;
    if (b->body != NULL) {
        v = get(b->body, k_user); CHECK(v);
        if (v != Py_None) {
            REQUIRE(is_str(v));
            SET(rec, k_user, v);
            SET(rec, k_identity_source, s_user_field);
        }
        stream = get(b->body, k_stream); CHECK(stream);
        if (!PyBool_Check(stream)) {
            int has = PyDict_Contains(b->body, k_stream);
            TRY(has);
            stream = !has && (b->ep_chat || b->ep_cmpl || b->ep_resp) ? Py_False : Py_None;
        }
    }
    b->e_stream = need(e, k_stream); CHECK(b->e_stream); REQUIRE(NONE_OR(b->e_stream, is_bool));
    SET(rec, k_stream, stream == Py_None ? b->e_stream : stream);
    return GO;
}

/* The prompt the log shows: the details line's, else the received line's. */
static int prompt(build_t *b) {
    PyObject *lp = b->details != Py_None && PyDict_GET_SIZE(b->details) ? get(b->details, k_prompt) : Py_None;
    CHECK(lp); REQUIRE(NONE_OR(lp, is_str));
    if (lp == Py_None || PyUnicode_GET_LENGTH(lp) == 0) {
        lp = b->received != Py_None && PyDict_GET_SIZE(b->received) ? get(b->received, k_prompt) : Py_None;
        CHECK(lp); REQUIRE(NONE_OR(lp, is_str));
    }
    b->lp = lp;
    SET(b->rec, k_prompt, lp);
    if (cut(b, lp)) TRY(PyList_Append(b->flags, s_prompt_truncated));
    return GO;
}

/* output, and choices when there are several: the finished outputs, else
 * a stream's completions. */
static int output(build_t *b) {
    b->last_finish = need(b->e, k_last_finish); CHECK(b->last_finish); REQUIRE(NONE_OR(b->last_finish, is_str));
    b->from_outputs = PyList_GET_SIZE(b->outputs) != 0;
    PyObject *src = b->from_outputs ? b->outputs : b->complete;
    Py_ssize_t nch = b->nch = PyList_GET_SIZE(src);
    choice *ch = b->ch;
    REQUIRE(nch <= MAXCH);
    for (Py_ssize_t i = 0; i < nch; i++) {
        PyObject *o = PyList_GET_ITEM(src, i);
        if (b->from_outputs) {
            REQUIRE(PyDict_CheckExact(o));
            ch[i].text = need(o, k_text); CHECK(ch[i].text);
            ch[i].finish = need(o, k_finish_reason); CHECK(ch[i].finish);
            ch[i].ids = need(o, k_ids); CHECK(ch[i].ids);
            REQUIRE(NONE_OR(ch[i].ids, is_int));
        } else {
            ch[i].text = o;
            ch[i].finish = b->last_finish;
            ch[i].ids = Py_None;
            REQUIRE(NONE_OR(o, is_str));  /* before reading it as a str: anything else is Python's */
            if (o != Py_None && PyUnicode_GET_LENGTH(o) > 0)
                REQUIRE(PyUnicode_READ_CHAR(o, 0) != '<');  /* maybe vLLM's placeholder: Python reads it */
        }
        REQUIRE(NONE_OR(ch[i].text, is_str));
        REQUIRE(NONE_OR(ch[i].finish, is_str));
    }
    SET(b->rec, k_output, nch ? ch[0].text : Py_None);
    for (Py_ssize_t i = 0; i < nch; i++)
        if (cut(b, ch[i].text)) {
            TRY(PyList_Append(b->flags, s_output_truncated));
            break;
        }
    if (nch > 1) {
        if ((b->tmp = PyList_New(nch)) == NULL) return FAILED;
        for (Py_ssize_t i = 0; i < nch; i++) {
            PyObject *c = PyDict_New(), *idx = PyLong_FromSsize_t(i);
            if (c == NULL || idx == NULL) { Py_XDECREF(c); Py_XDECREF(idx); return FAILED; }
            PyList_SET_ITEM(b->tmp, i, c);
            int bad = PyDict_SetItem(c, s_index, idx) < 0 || PyDict_SetItem(c, k_text, ch[i].text) < 0 ||
                      PyDict_SetItem(c, k_finish_reason, ch[i].finish) < 0;
            Py_DECREF(idx);
            if (bad) return FAILED;
        }
        SET(b->rec, k_choices, b->tmp);
        Py_CLEAR(b->tmp);
    }
    return GO;
}

/* wire.params(body), its unknowns from vLLM's effective values. */
static int params(build_t *b) {
    PyObject *body = b->body, *v;
    PyObject *eff = b->received != Py_None && PyDict_GET_SIZE(b->received) ? get(b->received, k_params) : Py_None;
    CHECK(eff);
    int t = truth(eff);
    REQUIRE(t >= 0);
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
    if ((b->params = PyDict_New()) == NULL) return FAILED;
    for (int i = 0; i < 4; i++) {
        v = pv[i];
        if (v == Py_None && eff != NULL) { v = get(eff, pk[i]); CHECK(v); }
        if (i == 2 && v == Py_None && body != NULL && (b->ep_chat || b->ep_cmpl)) v = s_one;
        SET(b->params, pk[i], v);
    }
    b->n_param = PyDict_GetItem(b->params, k_n);  /* borrowed, set above */
    REQUIRE(plain(b->n_param));
    SET(b->rec, k_params, b->params);
    return GO;
}
