/* Optional C accelerator of exporter/metrics.py: RequestMetrics.observe's
 * common case in one call.
 *
 * observe(state, rec) -> True (counted) | None (declined: nothing was
 * changed, the Python observe must run)
 *
 * ``state`` is the tuple RequestMetrics._fast_state() builds (the store's
 * dicts, bound once per _clear()). Every label comes from a memo the
 * Python path filled: the head memo (_heads) and the bounded dimensions'
 * _cache/_other. Any miss, any value that is not a str/None where a label
 * is made (the user label alone is asked of label() on a miss: most
 * users are new past --max-users), an int beyond 64 bits, a record or object of an unexpected type,
 * or a lock another thread holds declines, before anything is changed; so
 * admission (which depends on order) only ever happens in Python. The
 * updates then run under self._lock (taken without blocking): the scrape
 * thread's collector never sees a half-updated store. Between taking and
 * releasing it only the engine callback (_observe_engine) runs Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_FLAGS 32

enum { S_SELF, S_HEADS, S_USERS, S_FLAG, S_REASON, S_ACQUIRE, S_RELEASE, S_WITH_USER,
       S_REQUESTS, S_PROMPT, S_COMPLETION, S_USER_DURATION, S_USER_TIMED, S_EMPTY, S_OVERSIZED,
       S_FLAGS, S_SOURCE, S_INVALID, S_CONSECUTIVE,
       S_H_PROMPT, S_B_PROMPT, S_H_COMPLETION, S_B_COMPLETION, S_H_DURATION, S_B_DURATION,
       S_H_TTFT, S_B_TTFT, S_LEN };

static PyObject *a_label, *a_served, *a_names, *a_oversized, *a_enabled, *a_cache, *a_other, *a_engine_cb;
static PyObject *k_model, *k_endpoint, *k_status, *k_finish, *k_source, *k_user, *k_pt, *k_ct,
    *k_lat, *k_ttft, *k_empty, *k_identity, *k_invalid, *k_engine, *k_flags;
static PyObject *t_completed, *t_rejected, *t_none, *t_accepted, *t_rejected_label;
static PyObject *f_zero, *f_one, *i_zero, *i_one;
static PyObject *other_label = NULL;          /* labels.OTHER */
static PyTypeObject *served_type = NULL;      /* labels.ServedModels */

#define STR_OR_NONE(o) ((o) == Py_None || PyUnicode_CheckExact(o))

static int streq(PyObject *o, PyObject *s) {
    return PyUnicode_CheckExact(o) && PyUnicode_Compare(o, s) == 0;
}

/* rec.get(key) for an exact dict: borrowed, Py_None when absent; NULL on error. */
static PyObject *field(PyObject *rec, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(rec, key);
    if (v == NULL && !PyErr_Occurred()) v = Py_None;
    return v;
}

/* record.MAX_MEASURE: every integer up to it is exact as a double. */
#define MAX_MEASURE 9007199254740992.0

/* 1: an int/float (not bool) with *x its value, |value| <= MAX_MEASURE;
 * 0: not a number (the metric is skipped, as in Python); -1: a number
 * beyond MAX_MEASURE, infinite or NaN (decline: Python's rules for those
 * compare ints exactly, which a double cannot). */
static int number(PyObject *v, double *x) {
    if (PyFloat_CheckExact(v)) {
        *x = PyFloat_AS_DOUBLE(v);
        return fabs(*x) <= MAX_MEASURE ? 1 : -1;  /* NaN compares false */
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) { PyErr_Clear(); return -1; }
        if (n > (long long)MAX_MEASURE || n < -(long long)MAX_MEASURE) return -1;
        *x = (double)n;
        return 1;
    }
    return 0;
}

/* BoundedLabels.label(value) from its memos (value: str or None); on a miss,
 * with ``call``, label() itself (the user label: past --max-users most users
 * are new). 1: *out (new reference; None when the dimension is disabled);
 * 0: not in a memo, or an unexpected attribute (decline); -1: error. */
static int memo_label(PyObject *dim, PyObject *value, PyObject **out, int call) {
    PyObject *enabled = PyObject_GetAttr(dim, a_enabled);
    if (enabled == NULL) return -1;
    Py_DECREF(enabled);  /* a bool: the singletons outlive this call */
    if (enabled == Py_False) { *out = Py_NewRef(Py_None); return 1; }
    if (enabled != Py_True) return 0;
    PyObject *cache = PyObject_GetAttr(dim, a_cache);
    if (cache == NULL) return -1;
    int r = 0;
    if (PyDict_CheckExact(cache)) {
        PyObject *found = PyDict_GetItemWithError(cache, value);
        if (found != NULL && found != Py_None) { *out = Py_NewRef(found); r = 1; }
        else if (PyErr_Occurred()) r = -1;
    }
    Py_DECREF(cache);
    if (r != 0) return r;
    PyObject *other = PyObject_GetAttr(dim, a_other);
    if (other == NULL) return -1;
    if (PyDict_CheckExact(other)) {
        r = PyDict_Contains(other, value);
        if (r == 1) *out = Py_NewRef(other_label);
    }
    Py_DECREF(other);
    if (r == 0 && call) {
        /* Admission, as the Python observe would do it here (after the head,
         * before the lock). Calling it again after a decline below gives the
         * same label and the same memos: label() is idempotent. */
        *out = PyObject_CallMethodOneArg(dim, a_label, value);
        return *out == NULL ? -1 : 1;
    }
    return r;
}

/* d[key] = d.get(key, dflt) + v */
static int add(PyObject *d, PyObject *key, PyObject *dflt, PyObject *v) {
    PyObject *old = PyDict_GetItemWithError(d, key);
    if (old == NULL) {
        if (PyErr_Occurred()) return -1;
        old = dflt;
    }
    PyObject *sum = PyNumber_Add(old, v);
    if (sum == NULL) return -1;
    int r = PyDict_SetItem(d, key, sum);
    Py_DECREF(sum);
    return r;
}

/* _Histogram.observe(key, v): the row [0]*width + [0.0] made on first use,
 * the bucket found as bisect_left finds it. */
static int hist(PyObject *series, PyObject *bounds, PyObject *key, PyObject *v) {
    Py_ssize_t nb = PyTuple_GET_SIZE(bounds);
    PyObject *row = PyDict_GetItemWithError(series, key);
    if (row == NULL) {
        if (PyErr_Occurred()) return -1;
        row = PyList_New(nb + 2);
        if (row == NULL) return -1;
        for (Py_ssize_t i = 0; i <= nb; i++) PyList_SET_ITEM(row, i, Py_NewRef(i_zero));
        PyList_SET_ITEM(row, nb + 1, Py_NewRef(f_zero));
        int r = PyDict_SetItem(series, key, row);
        Py_DECREF(row);  /* the dict holds it */
        if (r < 0) return -1;
    }
    if (!PyList_CheckExact(row) || PyList_GET_SIZE(row) != nb + 2) {
        PyErr_SetString(PyExc_SystemError, "metrics histogram row of an unexpected shape");
        return -1;
    }
    Py_ssize_t lo = 0, hi = nb;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        int lt = PyObject_RichCompareBool(PyTuple_GET_ITEM(bounds, mid), v, Py_LT);
        if (lt < 0) return -1;
        if (lt) lo = mid + 1; else hi = mid;
    }
    PyObject *n = PyNumber_Add(PyList_GET_ITEM(row, lo), i_one);
    if (n == NULL) return -1;
    PyList_SetItem(row, lo, n);
    PyObject *s = PyNumber_Add(PyList_GET_ITEM(row, nb + 1), v);
    if (s == NULL) return -1;
    PyList_SetItem(row, nb + 1, s);
    return 0;
}

static PyObject *concat(PyObject *a, PyObject *b) { return PySequence_Concat(a, b); }

static PyObject *observe(PyObject *mod, PyObject *args) {
    PyObject *st, *rec;
    if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &st, &rec)) return NULL;
    if (PyTuple_GET_SIZE(st) != S_LEN || served_type == NULL) {
        PyErr_SetString(PyExc_ValueError, "observe: not a metrics state (or not configured)");
        return NULL;
    }
    if (!PyDict_CheckExact(rec)) Py_RETURN_NONE;
#define S(i) PyTuple_GET_ITEM(st, i)
    PyObject *self = S(S_SELF);
    PyObject *result = NULL, *raw = NULL, *user = NULL, *mu = NULL, *reason_label = NULL;
    PyObject *flag_labels[MAX_FLAGS];
    Py_ssize_t nflags = 0;
    int locked = 0;

    /* -- reads only, until the lock: a decline here changes nothing -- */
    PyObject *model, *endpoint, *status, *finish, *source, *urec, *pt, *ct, *lat, *ttft, *empty, *ident, *engine, *flags;
    if ((model = field(rec, k_model)) == NULL || (endpoint = field(rec, k_endpoint)) == NULL ||
        (status = field(rec, k_status)) == NULL || (finish = field(rec, k_finish)) == NULL ||
        (source = field(rec, k_source)) == NULL || (urec = field(rec, k_user)) == NULL ||
        (pt = field(rec, k_pt)) == NULL || (ct = field(rec, k_ct)) == NULL ||
        (lat = field(rec, k_lat)) == NULL || (ttft = field(rec, k_ttft)) == NULL ||
        (empty = field(rec, k_empty)) == NULL || (ident = field(rec, k_identity)) == NULL ||
        (engine = field(rec, k_engine)) == NULL || (flags = field(rec, k_flags)) == NULL)
        return NULL;
    if (!STR_OR_NONE(model) || !STR_OR_NONE(endpoint) || !STR_OR_NONE(status) || !STR_OR_NONE(finish) ||
        !STR_OR_NONE(source) || !STR_OR_NONE(urec))
        Py_RETURN_NONE;
    /* Borrowed references to rec's values: rec is not changed below before
     * the engine callback, which gets rec itself. Keep them alive anyway. */
    Py_INCREF(model);

    PyObject *served = PyObject_GetAttr(self, a_served);
    if (served == NULL) goto error;
    if (served != Py_None) {
        if (Py_TYPE(served) != served_type) { Py_DECREF(served); goto decline; }
        PyObject *names = PyObject_GetAttr(served, a_names);
        Py_DECREF(served);
        if (names == NULL) goto error;
        /* ServedModels.fold */
        if (names != Py_None && model != Py_None && PyUnicode_GET_LENGTH(model) != 0) {
            if (!PyFrozenSet_CheckExact(names)) { Py_DECREF(names); goto decline; }
            int in = PySet_Contains(names, model);
            if (in < 0) { Py_DECREF(names); goto error; }
            if (!in) Py_SETREF(model, Py_NewRef(other_label));
        }
        Py_DECREF(names);
    } else {
        Py_DECREF(served);
    }
    if (source == Py_None || PyUnicode_GET_LENGTH(source) == 0) source = t_none;
    raw = PyTuple_Pack(5, model, endpoint, status, finish, source);
    if (raw == NULL) goto error;
    PyObject *head = PyDict_GetItemWithError(S(S_HEADS), raw);
    if (head == NULL) {
        if (PyErr_Occurred()) goto error;
        goto decline;
    }
    if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 5 || !PyTuple_CheckExact(PyTuple_GET_ITEM(head, 2)) ||
        !PyTuple_CheckExact(PyTuple_GET_ITEM(head, 3)) || !PyTuple_CheckExact(PyTuple_GET_ITEM(head, 4)))
        goto decline;
    Py_INCREF(head);  /* kept even if the memo is cleared meanwhile */
    Py_SETREF(raw, head);  /* raw now holds the head */
    PyObject *hmodel = PyTuple_GET_ITEM(head, 0), *hendpoint = PyTuple_GET_ITEM(head, 1),
             *m1 = PyTuple_GET_ITEM(head, 2), *tail = PyTuple_GET_ITEM(head, 3), *source_key = PyTuple_GET_ITEM(head, 4);

    int r = memo_label(S(S_USERS), urec, &user, 1);
    if (r < 0) goto error;
    if (r == 0) goto decline;

    double vpt = 0, vct = 0, vlat = 0, vttft = 0;
    int npt = number(pt, &vpt), nct = number(ct, &vct), nlat = number(lat, &vlat), nttft = number(ttft, &vttft);
    if (npt < 0 || nct < 0 || nlat < 0 || nttft < 0) goto decline;
    PyObject *oversized = NULL;
    int is_served = !streq(status, t_rejected);
    int pt_ok = npt && vpt >= 0 && vpt < INFINITY;
    int ct_ok = is_served && nct && vct >= 0 && vct < INFINITY;
    int lat_ok = nlat && vlat < INFINITY && vlat == vlat;
    int ttft_ok = nttft && vttft < INFINITY && vttft == vttft;
    int over = 0;
    if (pt_ok) {
        oversized = PyObject_GetAttr(self, a_oversized);
        if (oversized == NULL) goto error;
        if (!PyLong_CheckExact(oversized)) { Py_DECREF(oversized); goto decline; }
        over = PyObject_RichCompareBool(pt, oversized, Py_GT);
        Py_DECREF(oversized);
        if (over < 0) goto error;
    }

    if (ident != Py_None && PyDict_Check(ident)) {
        if (!PyDict_CheckExact(ident)) goto decline;
        PyObject *reason = PyDict_GetItemWithError(ident, k_invalid);
        if (reason == NULL && PyErr_Occurred()) goto error;
        if (reason != NULL && reason != Py_None) {
            if (!PyUnicode_CheckExact(reason)) goto decline;
            r = memo_label(S(S_REASON), reason, &reason_label, 0);
            if (r < 0) goto error;
            if (r == 0) goto decline;
        }
    }

    if (flags != Py_None && !(PyList_CheckExact(flags) && PyList_GET_SIZE(flags) == 0)) {
        if (!PyList_CheckExact(flags) || PyList_GET_SIZE(flags) > MAX_FLAGS) goto decline;
        Py_ssize_t n = PyList_GET_SIZE(flags);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *f = PyList_GET_ITEM(flags, i);
            if (!PyUnicode_CheckExact(f)) goto decline;
            int dup = 0;  /* dict.fromkeys(flags): the first of equal flags, in order */
            for (Py_ssize_t j = 0; j < i && !dup; j++) dup = PyUnicode_Compare(PyList_GET_ITEM(flags, j), f) == 0;
            if (dup) continue;
            PyObject *label;
            r = memo_label(S(S_FLAG), f, &label, 0);
            if (r < 0) goto error;
            if (r == 0) goto decline;
            flag_labels[nflags++] = label;
        }
    }

    if (S(S_WITH_USER) == Py_True) {
        mu = PyTuple_Pack(2, hmodel, user);
        if (mu == NULL) goto error;
    } else {
        mu = Py_NewRef(m1);
    }

    /* -- the updates, under self._lock, in Python's order -- */
    PyObject *got = PyObject_CallOneArg(S(S_ACQUIRE), Py_False);
    if (got == NULL) goto error;
    Py_DECREF(got);
    if (got != Py_True) goto decline;  /* the scrape holds it: Python waits for it */
    locked = 1;

    PyObject *key = concat(mu, tail);
    if (key == NULL) goto error;
    r = add(S(S_REQUESTS), key, f_zero, f_one);
    Py_DECREF(key);
    if (r < 0) goto error;

    if (pt_ok) {
        if (is_served && (add(S(S_PROMPT), mu, f_zero, pt) < 0 || hist(S(S_H_PROMPT), S(S_B_PROMPT), m1, pt) < 0))
            goto error;
        if (over) {
            PyObject *k = PyTuple_Pack(1, is_served ? t_accepted : t_rejected_label), *kk;
            if (k == NULL) goto error;
            kk = concat(mu, k);
            Py_DECREF(k);
            if (kk == NULL) goto error;
            r = add(S(S_OVERSIZED), kk, f_zero, f_one);
            Py_DECREF(kk);
            if (r < 0) goto error;
        }
    }
    if (ct_ok && (add(S(S_COMPLETION), mu, f_zero, ct) < 0 || hist(S(S_H_COMPLETION), S(S_B_COMPLETION), m1, ct) < 0))
        goto error;
    if (lat_ok) {
        PyObject *v = vlat > 0 ? lat : f_zero;
        if (add(S(S_USER_DURATION), mu, f_zero, v) < 0 || add(S(S_USER_TIMED), mu, i_zero, i_one) < 0) goto error;
        PyObject *k = PyTuple_Pack(2, hmodel, hendpoint);
        if (k == NULL) goto error;
        r = hist(S(S_H_DURATION), S(S_B_DURATION), k, v);
        Py_DECREF(k);
        if (r < 0) goto error;
    }
    if (ttft_ok && hist(S(S_H_TTFT), S(S_B_TTFT), m1, vttft > 0 ? ttft : f_zero) < 0) goto error;
    if (empty == Py_True && add(S(S_EMPTY), mu, f_zero, f_one) < 0) goto error;
    if (streq(status, t_completed) && empty != Py_None) {
        if (empty == Py_True) { if (add(S(S_CONSECUTIVE), m1, f_zero, f_one) < 0) goto error; }
        else if (PyDict_SetItem(S(S_CONSECUTIVE), m1, f_zero) < 0) goto error;
    }
    if (add(S(S_SOURCE), source_key, f_zero, f_one) < 0) goto error;
    if (reason_label != NULL) {
        PyObject *k = PyTuple_Pack(2, hmodel, reason_label);
        if (k == NULL) goto error;
        r = add(S(S_INVALID), k, f_zero, f_one);
        Py_DECREF(k);
        if (r < 0) goto error;
    }
    if (engine != Py_None) {
        Py_INCREF(engine);
        PyObject *done = PyObject_CallMethodObjArgs(self, a_engine_cb, rec, engine, hmodel, mu, NULL);
        Py_DECREF(engine);
        if (done == NULL) goto error;
        Py_DECREF(done);
    }
    for (Py_ssize_t i = 0; i < nflags; i++) {
        PyObject *k = PyTuple_Pack(2, hmodel, flag_labels[i]);
        if (k == NULL) goto error;
        r = add(S(S_FLAGS), k, f_zero, f_one);
        Py_DECREF(k);
        if (r < 0) goto error;
    }
    result = Py_NewRef(Py_True);
    goto done;
decline:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    if (locked) {
        /* release even after an error, as Python's `with` does */
        PyObject *exc_type, *exc, *tb;
        PyErr_Fetch(&exc_type, &exc, &tb);
        PyObject *rel = PyObject_CallNoArgs(S(S_RELEASE));
        if (rel == NULL) {
            Py_XDECREF(exc_type); Py_XDECREF(exc); Py_XDECREF(tb);
            Py_CLEAR(result);
        } else {
            Py_DECREF(rel);
            PyErr_Restore(exc_type, exc, tb);
        }
    }
    for (Py_ssize_t i = 0; i < nflags; i++) Py_DECREF(flag_labels[i]);
    Py_XDECREF(reason_label);
    Py_XDECREF(mu);
    Py_XDECREF(user);
    Py_XDECREF(raw);
    Py_DECREF(model);
    return result;
#undef S
}

static PyObject *configure(PyObject *mod, PyObject *args) {
    PyObject *type, *other;
    if (!PyArg_ParseTuple(args, "O!U", &PyType_Type, &type, &other)) return NULL;
    Py_XSETREF(served_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(other_label, Py_NewRef(other));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"observe", observe, METH_VARARGS, "observe(state, rec) -> True | None (declined: run the Python observe)"},
    {"configure", configure, METH_VARARGS, "configure(ServedModels, OTHER)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_observe", NULL, -1, methods};

static int intern(PyObject **slot, const char *s) {
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__observe(void) {
    if (intern(&a_label, "label") || intern(&a_served, "served") || intern(&a_names, "_names") || intern(&a_oversized, "oversized_input_tokens") ||
        intern(&a_enabled, "enabled") || intern(&a_cache, "_cache") || intern(&a_other, "_other") ||
        intern(&a_engine_cb, "_observe_engine") || intern(&k_model, "model") || intern(&k_endpoint, "endpoint") ||
        intern(&k_status, "status") || intern(&k_finish, "finish_reason") || intern(&k_source, "identity_source") ||
        intern(&k_user, "user") || intern(&k_pt, "prompt_tokens") || intern(&k_ct, "completion_tokens") ||
        intern(&k_lat, "latency_seconds") || intern(&k_ttft, "ttft_seconds") || intern(&k_empty, "empty_response") ||
        intern(&k_identity, "identity") || intern(&k_invalid, "invalid_reason") || intern(&k_engine, "engine") ||
        intern(&k_flags, "flags") || intern(&t_completed, "completed") || intern(&t_rejected, "rejected") ||
        intern(&t_none, "none") || intern(&t_accepted, "accepted") || intern(&t_rejected_label, "rejected"))
        return NULL;
    if ((f_zero = PyFloat_FromDouble(0.0)) == NULL || (f_one = PyFloat_FromDouble(1.0)) == NULL ||
        (i_zero = PyLong_FromLong(0)) == NULL || (i_one = PyLong_FromLong(1)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
#ifdef OBSERVE_SOURCE_SHA256
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", OBSERVE_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
