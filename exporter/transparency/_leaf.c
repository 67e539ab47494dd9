/* Optional C accelerator of exporter/transparency/leaf_line.py: the Merkle
 * leaf of an archive line from the line's bytes.
 *
 * leaf(raw, salt, want_bytes=False) -> (seq, leaf hash) | (seq, leaf bytes) | None
 * canonical(raw) -> bytes | None (the chain's canonical form of a line; below)
 * seal(raw, label, key) -> (hash, sealed line) | None (the chain's seal of a line; below)
 *
 * The line must be in the writer's shape: a JSON object whose top-level keys
 * are exactly the configured ones in order (configure()), the last two being
 * the chain fields (printable-ASCII strings), "seq" a plain integer. JSON's
 * grammar is checked in full (strings and their escapes, numbers, literals,
 * nesting), so the spans found are the line's real top-level values. The
 * leaf bytes are LEAF_PREFIX + the line up to the chain fields + "}", with
 * each non-null content value replaced by "sha256:" + hex SHA-256(
 * CONTENT_PREFIX || salt || name || 0x00 || value bytes), or by the inner
 * string of an {"erased":"sha256:..."} value. leaf_line.py is the reference
 * (pure Python, same grammar) and says why a match may be trusted.
 *
 * One translation unit in parts: _leaf_json.h (the grammar), _leaf_tree.h
 * (extend), _leaf_canon.h (canonical, seal); setup.py and leaf_line.py hash
 * every _leaf* part, in name order, into the module's SOURCE_SHA256.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <openssl/sha.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>

#define MAX_KEYS 64
#define MAX_DEPTH 64

static int nkeys = 0;
static char *keys[MAX_KEYS];
static Py_ssize_t klens[MAX_KEYS];
static int content[MAX_KEYS];
static int seq_key = -1;
static unsigned char *leaf_prefix = NULL, *content_prefix = NULL;
static Py_ssize_t leaf_prefix_len = 0, content_prefix_len = 0;

#include "_leaf_json.h"

static const char HEX[] = "0123456789abcdef";

/* The leaf bytes of the n-byte line s under salt into *buf (grown as
 * needed; *cap its size) and its seq: the length, 0 where the line is not in
 * the writer's shape (leaf() gives None), -1 on an exception set. */
static Py_ssize_t leaf_into(const unsigned char *s, Py_ssize_t n, const unsigned char *salt, Py_ssize_t saltlen,
                            unsigned char **buf, Py_ssize_t *bufcap, long long *seq_out) {
    Cur c = {s, n, 0};
    Py_ssize_t va[MAX_KEYS], vb[MAX_KEYS], cut = -1;
    for (int k = 0; k < nkeys; k++) {
        if (c.i >= c.n || c.s[c.i] != (k == 0 ? '{' : ',')) return 0;
        if (k == nkeys - 2) cut = c.i;
        c.i++;
        if (c.i + klens[k] + 3 > c.n || c.s[c.i] != '"' || memcmp(c.s + c.i + 1, keys[k], (size_t)klens[k]) != 0
            || c.s[c.i + 1 + klens[k]] != '"' || c.s[c.i + 2 + klens[k]] != ':') return 0;
        c.i += klens[k] + 3;
        va[k] = c.i;
        if (k >= nkeys - 2) {
            if (chain_string(&c)) return 0;
        } else if (k == seq_key) {
            if (c.i < c.n && c.s[c.i] == '0') c.i++;
            else if (c.i < c.n && c.s[c.i] >= '1' && c.s[c.i] <= '9') digits(&c);
            else return 0;
            if (c.i - va[k] > 18) return 0;  /* fits in a long long */
        } else if (scan_value(&c, 0)) {
            return 0;
        }
        vb[k] = c.i;
    }
    if (c.i < c.n && c.s[c.i] == '}') c.i++; else return 0;
    if (c.i < c.n && c.s[c.i] == '\n') c.i++;
    if (c.i != c.n) return 0;

    /* leaf bytes: prefix + line[:cut] with content pieces + "}" */
    Py_ssize_t cap = leaf_prefix_len + cut + 2;
    for (int k = 0; k < nkeys; k++) if (content[k]) cap += 73;
    if (cap > *bufcap) {
        unsigned char *bigger = PyMem_Realloc(*buf, (size_t)cap);
        if (bigger == NULL) { PyErr_NoMemory(); return -1; }
        *buf = bigger;
        *bufcap = cap;
    }
    unsigned char *out = *buf;
    Py_ssize_t o = 0, pos = 0;
    memcpy(out, leaf_prefix, (size_t)leaf_prefix_len);
    o = leaf_prefix_len;
    for (int k = 0; k < nkeys; k++) {
        if (!content[k]) continue;
        Py_ssize_t a = va[k], b = vb[k];
        const unsigned char *v = c.s + a;
        Py_ssize_t len = b - a;
        if (len == 4 && memcmp(v, "null", 4) == 0) continue;
        memcpy(out + o, c.s + pos, (size_t)(a - pos));
        o += a - pos;
        pos = b;
        /* {"erased":"sha256:..."} exactly: its inner string as is */
        if (len >= 11 + 9 && memcmp(v, "{\"erased\":\"sha256:", 18) == 0 && v[len - 1] == '}') {
            Cur e = {v, len - 1, 10};
            if (scan_string(&e) == 0 && e.i == len - 1) {
                memcpy(out + o, v + 10, (size_t)(len - 11));
                o += len - 11;
                continue;
            }
        }
        SHA256_CTX ctx;
        unsigned char md[32];
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, content_prefix, (size_t)content_prefix_len);
        SHA256_Update(&ctx, salt, (size_t)saltlen);
        SHA256_Update(&ctx, keys[k], (size_t)klens[k]);
        SHA256_Update(&ctx, "", 1);
        SHA256_Update(&ctx, v, (size_t)len);
        SHA256_Final(md, &ctx);
        memcpy(out + o, "\"sha256:", 8);
        o += 8;
        for (int j = 0; j < 32; j++) { out[o++] = HEX[md[j] >> 4]; out[o++] = HEX[md[j] & 15]; }
        out[o++] = '"';
    }
    memcpy(out + o, c.s + pos, (size_t)(cut - pos));
    o += cut - pos;
    out[o++] = '}';
    long long seq = 0;
    for (Py_ssize_t j = va[seq_key]; j < vb[seq_key]; j++) seq = seq * 10 + (c.s[j] - '0');
    *seq_out = seq;
    return o;
}

/* The leaf hash of the n leaf bytes at b: SHA-256(0x00 || b) (RFC 9162). */
static void leaf_hash(const unsigned char *b, Py_ssize_t n, unsigned char md[32]) {
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, "", 1);
    SHA256_Update(&ctx, b, (size_t)n);
    SHA256_Final(md, &ctx);
}

static int configured(void) {
    if (nkeys < 3 || seq_key < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_leaf: configure() was not called");
        return 0;
    }
    return 1;
}

static PyObject *leaf(PyObject *self, PyObject *args) {
    Py_buffer raw, salt;
    int want_bytes = 0;
    if (!configured()) return NULL;
    if (!PyArg_ParseTuple(args, "y*y*|p", &raw, &salt, &want_bytes)) return NULL;
    PyObject *result = NULL;
    unsigned char *buf = NULL;
    Py_ssize_t bufcap = 0;
    long long seq = 0;
    Py_ssize_t o = leaf_into(raw.buf, raw.len, salt.buf, salt.len, &buf, &bufcap, &seq);
    if (o == 0) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else if (o > 0) {
        if (want_bytes) {
            result = Py_BuildValue("(Ly#)", seq, (const char *)buf, o);
        } else {
            unsigned char md[32];
            leaf_hash(buf, o, md);
            result = Py_BuildValue("(Ly#)", seq, (const char *)md, (Py_ssize_t)32);
        }
    }
    PyMem_Free(buf);
    PyBuffer_Release(&raw);
    PyBuffer_Release(&salt);
    return result;
}

#include "_leaf_tree.h"
#include "_leaf_canon.h"

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *ks, *cs;
    Py_buffer lp, cp;
    if (!PyArg_ParseTuple(args, "O!O!y*y*", &PyTuple_Type, &ks, &PyTuple_Type, &cs, &lp, &cp)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(ks);
    /* Everything is checked before the old configuration is dropped (a
     * refused one leaves the last in force), and running out of memory
     * leaves the module unconfigured (configured() then raises), never half
     * configured: leaf_into() trusts these tables. */
    int is_content[MAX_KEYS], seq_at = -1;
    const char *err = NULL;
    PyObject *err_type = PyExc_ValueError;
    if (n < 3 || n > MAX_KEYS || PyTuple_GET_SIZE(cs) != n) err = "_leaf.configure: bad key tuples";
    for (Py_ssize_t k = 0; err == NULL && k < n; k++) {
        PyObject *key = PyTuple_GET_ITEM(ks, k);
        if (!PyBytes_Check(key)) { err = "_leaf.configure: keys must be bytes"; err_type = PyExc_TypeError; break; }
        /* PyObject_IsTrue can fail (and run Python code): checked, not
         * stored as -1 with an exception left set. */
        int t = PyObject_IsTrue(PyTuple_GET_ITEM(cs, k));
        if (t < 0) { PyBuffer_Release(&lp); PyBuffer_Release(&cp); return NULL; }
        is_content[k] = t;
        if (PyBytes_GET_SIZE(key) == 3 && memcmp(PyBytes_AS_STRING(key), "seq", 3) == 0) seq_at = (int)k;
    }
    /* leaf_into() cuts the line before the last two (chain) keys and copies
     * line[pos:cut] after each content span: a content or seq key among
     * them would make that length negative (a wild memcpy). */
    if (err == NULL && (seq_at < 0 || seq_at >= n - 2 || is_content[n - 2] || is_content[n - 1]))
        err = "_leaf.configure: seq and the content keys must come before the two chain keys";
    if (err != NULL) {
        PyBuffer_Release(&lp); PyBuffer_Release(&cp);
        PyErr_SetString(err_type, err);
        return NULL;
    }
    for (int k = 0; k < nkeys; k++) { PyMem_Free(keys[k]); keys[k] = NULL; }
    nkeys = 0;
    seq_key = -1;
    PyMem_Free(leaf_prefix); PyMem_Free(content_prefix);
    leaf_prefix = PyMem_Malloc((size_t)lp.len + 1);
    content_prefix = PyMem_Malloc((size_t)cp.len + 1);
    /* every allocation checked: a NULL from PyMem_Malloc was memcpy'd into */
    int oom = leaf_prefix == NULL || content_prefix == NULL;
    for (Py_ssize_t k = 0; k < n && !oom; k++) {
        PyObject *key = PyTuple_GET_ITEM(ks, k);
        klens[k] = PyBytes_GET_SIZE(key);
        keys[k] = PyMem_Malloc((size_t)klens[k] + 1);
        if (keys[k] == NULL) { oom = 1; nkeys = (int)k; break; }
        memcpy(keys[k], PyBytes_AS_STRING(key), (size_t)klens[k] + 1);
        content[k] = is_content[k];
        nkeys = (int)k + 1;
    }
    if (oom) {
        for (int k = 0; k < nkeys; k++) { PyMem_Free(keys[k]); keys[k] = NULL; }
        nkeys = 0;
        PyBuffer_Release(&lp); PyBuffer_Release(&cp);
        return PyErr_NoMemory();
    }
    memcpy(leaf_prefix, lp.buf, (size_t)lp.len); leaf_prefix_len = lp.len;
    memcpy(content_prefix, cp.buf, (size_t)cp.len); content_prefix_len = cp.len;
    seq_key = seq_at;
    PyBuffer_Release(&lp); PyBuffer_Release(&cp);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"leaf", leaf, METH_VARARGS, "leaf(raw, salt, want_bytes=False) -> (seq, leaf hash or bytes) | None"},
    {"extend", extend, METH_VARARGS, "extend(lines, salts, size, nodes) -> (salt+leaf entries, frontier nodes) | None"},
    {"configure", configure, METH_VARARGS, "configure(keys, is_content, leaf_prefix, content_prefix)"},
    {"canonical", canonical, METH_VARARGS, "canonical(raw) -> raw with every object's keys sorted | None"},
    {"seal", seal, METH_VARARGS, "seal(raw, label, key) -> (label + hex digest of canonical(raw), sealed line) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_leaf", NULL, -1, methods};

PyMODINIT_FUNC PyInit__leaf(void) {
    init_plain();
#ifdef LEAF_SOURCE_SHA256
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", LEAF_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
#else
    return PyModule_Create(&module);
#endif
}
