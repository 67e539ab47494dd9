/* Part of _leaf.c: a flush batch's tree entries and frontier in one call. */

/* extend(lines, salts, size, nodes) -> (entries, nodes) | None: a flush
 * batch of exporter.transparency.tree.TreeFile.extend in one call. ``lines``
 * is a list of n archive lines (bytes), ``salts`` their n salts of
 * ``salt_len`` bytes end to end (configure()); ``size`` and ``nodes`` a
 * merkle.Frontier. ``entries`` is salt_i || leaf hash_i for every line, end
 * to end; ``nodes`` the frontier after appending the n leaf hashes by
 * Frontier.extend's rule (merge equal subtrees: SHA-256(0x01 || left ||
 * right), largest first). None where any line is not in the writer's shape
 * (the caller then runs the per-record reference for the whole batch) or an
 * argument is not what TreeFile passes: nothing is half done. */
#define SALT_MAX 64
static PyObject *extend(PyObject *self, PyObject *args) {
    PyObject *lines, *nodes, *size_obj;
    Py_buffer salts;
    unsigned long long size;
    if (!configured()) return NULL;
    /* size is taken as an object: "K" reads any int modulo 2**64 without an
     * error (2**64 + 1 became size 1, -2**64 size 0, a batch computed on a
     * tree that is not the caller's) and calls __index__ on anything else. */
    if (!PyArg_ParseTuple(args, "Oy*OO", &lines, &salts, &size_obj, &nodes)) return NULL;
    PyObject *result = NULL, *entries = NULL, *out = NULL;
    unsigned char *buf = NULL;
    Py_ssize_t bufcap = 0;
    unsigned char stack[64][32];
    if (!PyList_CheckExact(lines) || !PyList_CheckExact(nodes) || !PyLong_Check(size_obj)) {
        PyBuffer_Release(&salts);
        Py_RETURN_NONE;
    }
    /* An int (or int subclass: its value, no Python code runs) of 0..2**64-1
     * exactly; negative or larger: declined (the check below bounds it to
     * 2**62), never an OverflowError left set. */
    size = PyLong_AsUnsignedLongLong(size_obj);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) { PyBuffer_Release(&salts); return NULL; }
        PyErr_Clear();
        PyBuffer_Release(&salts);
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(lines), sl = salts.len / (n ? n : 1), top = PyList_GET_SIZE(nodes);
    int decline = n == 0 || sl <= 0 || sl > SALT_MAX || sl * n != salts.len || top > 64
                  || top != __builtin_popcountll(size) || size > (1ULL << 62);
    for (Py_ssize_t j = 0; j < top && !decline; j++) {
        PyObject *h = PyList_GET_ITEM(nodes, j);
        if (!PyBytes_CheckExact(h) || PyBytes_GET_SIZE(h) != 32) decline = 1;
        else memcpy(stack[j], PyBytes_AS_STRING(h), 32);
    }
    if (decline) goto none;
    entries = PyBytes_FromStringAndSize(NULL, n * (sl + 32));
    if (entries == NULL) goto done;
    unsigned char *e = (unsigned char *)PyBytes_AS_STRING(entries);
    const unsigned char *salt = salts.buf;
    for (Py_ssize_t i = 0; i < n; i++, salt += sl, e += sl + 32) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyBytes_CheckExact(line)) goto none;
        long long seq;
        Py_ssize_t o = leaf_into((const unsigned char *)PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line),
                                 salt, sl, &buf, &bufcap, &seq);
        if (o < 0) goto done;
        if (o == 0) goto none;
        memcpy(e, salt, (size_t)sl);
        unsigned char h[32];
        leaf_hash(buf, o, h);
        memcpy(e + sl, h, 32);
        for (unsigned long long m = size; m & 1; m >>= 1) {  /* as carrying in binary addition */
            SHA256_CTX ctx;
            SHA256_Init(&ctx);
            SHA256_Update(&ctx, "\x01", 1);
            SHA256_Update(&ctx, stack[--top], 32);
            SHA256_Update(&ctx, h, 32);
            SHA256_Final(h, &ctx);
        }
        memcpy(stack[top++], h, 32);
        size++;
    }
    goto built;
none:
    Py_CLEAR(entries);
    Py_INCREF(Py_None);
    result = Py_None;
    goto done;
built:
    out = PyList_New(top);
    if (out == NULL) goto done;
    for (Py_ssize_t j = 0; j < top; j++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)stack[j], 32);
        if (h == NULL) goto done;
        PyList_SET_ITEM(out, j, h);
    }
    result = PyTuple_Pack(2, entries, out);
done:
    Py_XDECREF(entries);
    Py_XDECREF(out);
    PyMem_Free(buf);
    PyBuffer_Release(&salts);
    return result;
}

