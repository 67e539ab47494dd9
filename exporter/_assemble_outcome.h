/* _assemble.c's last steps: what it cost and how it ended -- token counts,
 * status and latency, flags, engine. Included by _assemble.c only (its
 * names and build_t), after _assemble_request.h. Each step returns GO,
 * DECLINED or FAILED. */

/* The logged prompt ids' count, unless vLLM cut them at max_log_len; a
 * count only the tokenizer could give declines. */
static int prompt_tokens(build_t *b) {
    PyObject *ids = b->details != Py_None && PyDict_GET_SIZE(b->details) ? get(b->details, k_prompt_token_ids)
                                                                          : Py_None;
    CHECK(ids);
    if (ids == Py_None && b->received != Py_None && PyDict_GET_SIZE(b->received)) {
        ids = get(b->received, k_prompt_token_ids); CHECK(ids);
    }
    if (ids == Py_None || PyLong_CheckExact(ids)) {
        Py_INCREF(ids); b->pt = ids;
    } else {
        REQUIRE(PyList_CheckExact(ids));
        if ((b->pt = PyLong_FromSsize_t(PyList_GET_SIZE(ids))) == NULL) return FAILED;
    }
    if (b->pt != Py_None && b->limit != Py_None) {
        int at_limit = PyObject_RichCompareBool(b->pt, b->limit, Py_GE);
        TRY(at_limit);
        if (at_limit) { Py_INCREF(Py_None); Py_SETREF(b->pt, Py_None); }
    }
    if (b->pt == Py_None && b->can_count && b->lp != Py_None && !cut(b, b->lp)) return DECLINED;  /* the tokenizer's */
    SET(b->rec, k_prompt_tokens, b->pt);
    return GO;
}

/* assemble._completion_from_log: the outputs' ids, the output line's total,
 * or a stream's delta ids; then tokens_source. */
static int completion_tokens(build_t *b) {
    PyObject *e = b->e, *v;
    choice *ch = b->ch;
    Py_ssize_t nch = b->nch;
    PyObject *trunc = get(e, k_out_ids_truncated); CHECK(trunc);
    int truncated = truth(trunc);
    REQUIRE(truncated >= 0);
    int known = 1;
    for (Py_ssize_t i = 0; i < nch; i++) if (ch[i].ids == Py_None) known = 0;
    int n_ok = 1;
    if (b->n_param != Py_None) {
        if ((b->tmp = PyLong_FromSsize_t(nch)) == NULL) return FAILED;
        n_ok = PyObject_RichCompareBool(b->n_param, b->tmp, Py_EQ);
        Py_CLEAR(b->tmp);
        TRY(n_ok);
    }
    PyObject *delta_known = need(e, k_delta_ids_known); CHECK(delta_known); REQUIRE(is_bool(delta_known));
    int by_deltas = b->e_stream == Py_True && b->ndeltas && delta_known == Py_True;
    int logged = 0;
    if (b->out_ids != Py_None && !truncated) {
        Py_INCREF(b->out_ids); b->ct = b->out_ids; logged = 1;
    } else {
        int max_ok = 1;
        if (b->from_outputs && known && n_ok && b->limit != Py_None) {
            for (Py_ssize_t i = 0; i < nch && max_ok; i++) {
                max_ok = PyObject_RichCompareBool(ch[i].ids, b->limit, Py_LT);
                TRY(max_ok);
            }
        }
        if ((b->from_outputs && known && n_ok && max_ok) || (!by_deltas && nch && known)) {
            if ((b->ct = PyLong_FromLong(0)) == NULL) return FAILED;
            for (Py_ssize_t i = 0; i < nch; i++) {
                PyObject *s = PyNumber_Add(b->ct, ch[i].ids);
                Py_SETREF(b->ct, s);
                if (s == NULL) return FAILED;
            }
            logged = 1;
        } else if (by_deltas) {
            v = need(e, k_delta_ids); CHECK(v);
            Py_INCREF(v); b->ct = v;
            logged = v != Py_None;
        } else {
            if (b->can_count && nch) return DECLINED;  /* the tokenizer's */
            Py_INCREF(Py_None); b->ct = Py_None;
        }
    }
    SET(b->rec, k_completion_tokens, b->ct);
    SET(b->rec, k_tokens_source, b->pt != Py_None || logged ? s_logged_ids : Py_None);
    return GO;
}

/* status, finish_reason, empty_response, latency_seconds, error. */
static int outcome(build_t *b) {
    PyObject *rec = b->rec;
    choice *ch = b->ch;
    Py_ssize_t nch = b->nch;
    int failed = b->failed != Py_None && PyUnicode_GET_LENGTH(b->failed);
    PyObject *done_t = need(b->e, k_done_t); CHECK(done_t);
    PyObject *status = b->aborted ? s_aborted : failed ? s_error : done_t != Py_None ? s_completed : s_incomplete;
    SET(rec, k_status, status);
    PyObject *finish = nch ? ch[0].finish : Py_None;
    if (eq_ascii(finish, "streaming_complete") || eq_ascii(finish, "None")) finish = Py_None;
    if (finish == Py_None && b->e_stream == Py_True && b->last_finish != Py_None
        && PyUnicode_GET_LENGTH(b->last_finish))
        finish = b->last_finish;
    if (finish == Py_None && status == s_aborted) finish = s_abort;
    SET(rec, k_finish_reason, finish);
    if (status == s_completed && nch) {
        int empty = 1;
        for (Py_ssize_t i = 0; i < nch && empty; i++)
            empty = ch[i].text != Py_None && PyUnicode_GET_LENGTH(ch[i].text) == 0;
        SET(rec, k_empty_response, empty ? Py_True : Py_False);
    }
    PyObject *precise = need(b->e, k_precise); CHECK(precise); REQUIRE(is_bool(precise));
    if (precise == Py_True && b->rt != Py_None && done_t != Py_None) {
        REQUIRE(PyFloat_CheckExact(done_t));
        double d = PyFloat_AS_DOUBLE(done_t) - PyFloat_AS_DOUBLE(b->rt);
        PyObject *f = PyFloat_FromDouble(d > 0.0 ? d : 0.0);  /* max(0.0, d): 0.0 for NaN too */
        if (f == NULL) return FAILED;
        b->tmp = PyObject_CallMethodObjArgs(f, s_round, s_six, NULL);
        Py_DECREF(f);
        if (b->tmp == NULL) return FAILED;
        SET(rec, k_latency_seconds, b->tmp);
        Py_CLEAR(b->tmp);
    }
    if (failed) SET(rec, k_error, b->failed);
    return GO;
}

/* oversized_input, middleware_missing, then the body's own flags, each once. */
static int flag_list(build_t *b) {
    if (b->pt != Py_None) {
        int big = PyObject_RichCompareBool(b->pt, b->oversized, Py_GT);
        TRY(big);
        if (big) TRY(PyList_Append(b->flags, s_oversized_input));
    }
    if (b->mw_seen) TRY(PyList_Append(b->flags, s_middleware_missing));
    if (b->body != NULL) {
        PyObject *in = get(b->body, k_input_flags); CHECK(in);
        int t = truth(in);
        REQUIRE(t >= 0);
        if (t) {
            REQUIRE(PyList_CheckExact(in));
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(in); i++) {
                PyObject *f = PyList_GET_ITEM(in, i);
                REQUIRE(PyUnicode_CheckExact(f));
                int has = PySequence_Contains(b->flags, f);
                TRY(has);
                if (!has) TRY(PyList_Append(b->flags, f));
            }
        }
    }
    SET(b->rec, k_flags, b->flags);
    return GO;
}

/* The stat-logger plugin's timings, in ENGINE_FIELDS' order. */
static int engine(build_t *b) {
    PyObject *engine = get(b->e, k_engine); CHECK(engine);
    if (engine == Py_None) return GO;
    REQUIRE(PyDict_CheckExact(engine));
    if ((b->tmp = PyDict_New()) == NULL) return FAILED;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(engine_fields); i++) {
        PyObject *k = PyTuple_GET_ITEM(engine_fields, i), *v = get(engine, k);
        CHECK(v);
        SET(b->tmp, k, v);
    }
    SET(b->rec, k_engine, b->tmp);
    Py_CLEAR(b->tmp);
    TRY(PyList_Append(b->sources, s_engine));
    return GO;
}
