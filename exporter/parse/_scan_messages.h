/* The request-log messages (output_line.py, prompt_line.py, the engine's
 * Added/Finished, uvicorn access lines) and their dispatch (messages._dispatch). */
#ifndef VLLM_AUDIT_SCAN_MESSAGES_H
#define VLLM_AUDIT_SCAN_MESSAGES_H

#include "_scan_repr.h"

/* -- messages ------------------------------------------------------------------ */

/* Event(kind, rid, when, data), all four borrowed. */
static PyObject *new_event(PyObject *kind, PyObject *rid, PyObject *when, PyObject *data) {
    if (!g_event_off[0]) return PyObject_CallFunctionObjArgs(g_event, kind, rid, when, data, NULL);
    PyTypeObject *tp = (PyTypeObject *)g_event;
    PyObject *r = tp->tp_alloc(tp, 0);
    if (!r) return NULL;
    PyObject *values[4] = {kind, rid, when, data};
    for (int j = 0; j < 4; j++) *(PyObject **)((char *)r + g_event_off[j]) = Py_NewRef(values[j]);
    return r;
}

/* Event(kind, rid, when, data), taking the references to rid and data. */
static PyObject *event(PyObject *kind, PyObject *rid, PyObject *when, PyObject *data) {
    PyObject *r = NULL;
    if (rid && data) r = new_event(kind, rid, when, data);
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
        /* The members the type checks read come from body_project
         * (_scan_body.h), the checks from body_data (_scan_bodycheck.h); on
         * a decline of either body_event decides, in Python. */
        PyObject *projected = body_project(L, k + 12);
        PyObject *data = projected && g_body_kind ? body_data(L, k + 12, projected) : NULL;
        if (data) {
            Py_DECREF(projected);
            return event(g_body_kind, rid, when, data);
        }
        PyObject *start = PyLong_FromSsize_t(k + 12);
        PyObject *r = start ? PyObject_CallFunctionObjArgs(g_body_fn, L->s, start, rid, when,
                                                           projected ? projected : Py_None, NULL)
                            : NULL;
        Py_XDECREF(projected);
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
    PyObject *r = new_event(g_access, Py_None, Py_None, data);
    Py_DECREF(data);
    return r;
}

#endif /* VLLM_AUDIT_SCAN_MESSAGES_H */
