/* Part of _leaf.c: the chain's canonical form and seal of an archive line. */

/* canonical(raw) -> bytes | None: the compact JSON value ``raw`` with the
 * members of every object sorted by key, i.e. what
 * json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
 * gives for the value ``raw`` encodes with sort_keys=False (the chain's
 * canonical bytes from the archive line, exporter.record.sealed_line).
 * Values are copied byte for byte; keys compare as their UTF-8 bytes, which
 * is code point order, Python's str order. None (never a guess) for a key
 * holding an escape (its bytes are not its characters), a repeated key,
 * a structure outside JSON's compact grammar, or nesting beyond MAX_DEPTH.
 * The input is the C encoder's own line, so inside strings only the
 * closing quote is looked for (escapes and atoms are the encoder's).
 * Sorting only moves bytes: the output is exactly as long as the input. */
typedef struct { Py_ssize_t k, klen, m, mend, at; } Member;  /* key text; the member "key":value; its place */

/* The top-level object's keys of the last call and the order that sorts
 * them: records all have the same keys, so the sort is done once. */
#define TOP_MAX 40
static int top_n = -1;
static Py_ssize_t top_klen[TOP_MAX], top_perm[TOP_MAX];
static unsigned char top_keys[4096];

static const unsigned char *member_base;

static inline int member_cmp(const void *a, const void *b) {
    const Member *x = a, *y = b;
    Py_ssize_t n = x->klen < y->klen ? x->klen : y->klen;
    int r = memcmp(member_base + x->k, member_base + y->k, (size_t)n);
    if (r) return r;
    return (x->klen > y->klen) - (x->klen < y->klen);
}

/* The end of the string at c->i, for canonical(): its input is the C
 * encoder's line, so only the structure matters here; memchr finds the
 * closing quote (a quote after an odd run of backslashes is escaped). */
static int skip_string(Cur *c) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i + 1, n = c->n;
    for (;;) {
        const unsigned char *q = i < n ? memchr(s + i, '"', (size_t)(n - i)) : NULL;
        if (q == NULL) return -1;
        Py_ssize_t e = q - s, b = e;
        while (b > c->i + 1 && s[b - 1] == '\\') b--;
        if (((e - b) & 1) == 0) { c->i = e + 1; return 0; }
        i = e + 1;
    }
}

/* ``out`` starts as a copy of the input. Canonicalising a value only
 * reorders the members of its objects, so a value keeps its offset and
 * length: each object is sorted in place once its members' values are,
 * through ``scratch`` (as long as the input). */
typedef struct { unsigned char *out, *scratch; } Canon;

static int canon_value(Canon *w, Cur *c, int depth) {
    if (c->i >= c->n) return -1;
    unsigned char ch = c->s[c->i];
    if (ch == '[') {
        if (depth >= MAX_DEPTH) return -1;
        c->i++;
        if (c->i < c->n && c->s[c->i] == ']') { c->i++; return 0; }
        for (;;) {
            if (canon_value(w, c, depth + 1)) return -1;
            if (c->i >= c->n) return -1;
            if (c->s[c->i] == ',') { c->i++; continue; }
            if (c->s[c->i] == ']') { c->i++; return 0; }
            return -1;
        }
    }
    if (ch == '"') return skip_string(c);
    if (ch != '{') return scan_value(c, depth);
    if (depth >= MAX_DEPTH) return -1;
    c->i++;
    if (c->i < c->n && c->s[c->i] == '}') { c->i++; return 0; }
    Member small[40], *m = small;
    Py_ssize_t cnt = 0, cap = 40;
    int rc = -1, sorted = 1;
    for (;;) {
        Py_ssize_t ks = c->i;
        if (ks >= c->n || c->s[ks] != '"' || skip_string(c)) goto done;
        Py_ssize_t klen = c->i - ks - 2;
        if (memchr(c->s + ks + 1, '\\', (size_t)klen) != NULL) goto done;
        if (c->i >= c->n || c->s[c->i] != ':') goto done;
        c->i++;
        if (canon_value(w, c, depth + 1)) goto done;
        if (cnt == cap) {
            Member *bigger = PyMem_Malloc((size_t)(cap * 2) * sizeof(Member));
            if (bigger == NULL) { PyErr_NoMemory(); rc = -2; goto done; }
            memcpy(bigger, m, (size_t)cnt * sizeof(Member));
            if (m != small) PyMem_Free(m);
            m = bigger;
            cap *= 2;
        }
        m[cnt].k = ks + 1; m[cnt].klen = klen; m[cnt].m = ks; m[cnt].mend = c->i; m[cnt].at = cnt;
        member_base = c->s;
        if (cnt && member_cmp(&m[cnt - 1], &m[cnt]) >= 0) sorted = 0;
        cnt++;
        if (c->i >= c->n) goto done;
        if (c->s[c->i] == ',') { c->i++; continue; }
        if (c->s[c->i] == '}') { c->i++; break; }
        goto done;
    }
    if (!sorted && depth == 0 && cnt == top_n) {
        /* The record's own keys, as the last time: their order is known. */
        Py_ssize_t off = 0, j = 0;
        for (; j < cnt; j++) {
            if (m[j].klen != top_klen[j] || memcmp(c->s + m[j].k, top_keys + off, (size_t)m[j].klen) != 0) break;
            off += m[j].klen;
        }
        if (j == cnt) {
            Member by_key[TOP_MAX];
            for (j = 0; j < cnt; j++) by_key[j] = m[top_perm[j]];
            memcpy(m, by_key, (size_t)cnt * sizeof(Member));
            sorted = 2;  /* in key order now, without repeats (the keys sorted last time) */
        }
    }
    if (!sorted) {
        member_base = c->s;
        if (cnt <= 64) {  /* few members: an insertion sort beats qsort's indirect calls */
            for (Py_ssize_t j = 1; j < cnt; j++) {
                Member x = m[j];
                Py_ssize_t h = j;
                while (h > 0 && member_cmp(&m[h - 1], &x) > 0) { m[h] = m[h - 1]; h--; }
                m[h] = x;
            }
        } else {
            qsort(m, (size_t)cnt, sizeof(Member), member_cmp);
        }
        for (Py_ssize_t j = 1; j < cnt; j++)
            if (member_cmp(&m[j - 1], &m[j]) == 0) goto done;  /* a repeated key: not a dict's */
        if (depth == 0 && cnt <= TOP_MAX) {
            Py_ssize_t total = 0;
            for (Py_ssize_t j = 0; j < cnt; j++) total += m[j].klen;
            if (total <= (Py_ssize_t)sizeof(top_keys)) {
                Py_ssize_t off = 0;
                for (Py_ssize_t j = 0; j < cnt; j++) top_perm[j] = m[j].at;  /* sorted j <- original at */
                for (Py_ssize_t j = 0; j < cnt; j++) {  /* the keys in their original order */
                    Py_ssize_t a = 0;
                    while (m[a].at != j) a++;
                    top_klen[j] = m[a].klen;
                    memcpy(top_keys + off, c->s + m[a].k, (size_t)m[a].klen);
                    off += m[a].klen;
                }
                top_n = (int)cnt;
            }
        }
    }
    if (sorted != 1) {
        /* the members as canonicalised so far, then back in key order */
        Py_ssize_t lo = m[0].m, hi = m[0].mend;
        for (Py_ssize_t j = 1; j < cnt; j++) {
            if (m[j].m < lo) lo = m[j].m;
            if (m[j].mend > hi) hi = m[j].mend;
        }
        memcpy(w->scratch + lo, w->out + lo, (size_t)(hi - lo));
        Py_ssize_t o = lo;
        for (Py_ssize_t j = 0; j < cnt; j++) {
            if (j) w->out[o++] = ',';
            memcpy(w->out + o, w->scratch + m[j].m, (size_t)(m[j].mend - m[j].m));
            o += m[j].mend - m[j].m;
        }
        if (o != hi) goto done;  /* cannot happen: the same members and commas */
    }
    rc = 0;
done:
    if (m != small) PyMem_Free(m);
    return rc;
}

/* The canonical form of the n bytes at s into out (n bytes; scratch: n
 * more): 0, 1 where canonical() gives None, -1 on an exception set. */
static int canon_into(const unsigned char *s, Py_ssize_t n, unsigned char *out, unsigned char *scratch) {
    if (n == 0 || s[0] != '{') return 1;
    memcpy(out, s, (size_t)n);
    Cur c = {s, n, 0};
    Canon w = {out, scratch};
    int rc = canon_value(&w, &c, 0);
    if (rc == -2) return -1;
    return rc != 0 || c.i != c.n ? 1 : 0;
}

static PyObject *canonical(PyObject *self, PyObject *args) {
    Py_buffer raw;
    if (!PyArg_ParseTuple(args, "y*", &raw)) return NULL;
    PyObject *result = PyBytes_FromStringAndSize(NULL, raw.len);
    unsigned char *scratch = PyMem_Malloc((size_t)raw.len + 1);
    int rc = -1;
    if (result == NULL || scratch == NULL) PyErr_NoMemory();
    else rc = canon_into((const unsigned char *)raw.buf, raw.len, (unsigned char *)PyBytes_AS_STRING(result), scratch);
    PyMem_Free(scratch);
    PyBuffer_Release(&raw);
    if (rc != 0) {
        Py_CLEAR(result);
        if (rc == 1) Py_RETURN_NONE;
    }
    return result;
}

/* seal(raw, label, key) -> (hash, sealed line) | None: exporter.chain.
 * Chain.seal_line's last step in one call. ``raw`` is the C encoder's line
 * of a record holding seq and prev_hash but no hash; ``hash`` is ``label``
 * + the hex SHA-256 of canonical(raw), or its HMAC-SHA256 under ``key``
 * (bytes, or None for none); the sealed line is ``raw`` closed by
 * ,"hash":"<hash>"} and "\n", what encoding the sealed record gives (the
 * hash is its last key and plain ASCII). None where canonical() declines
 * or ``key`` is neither bytes nor None.
 * It saves the canonical bytes object, the hash object and the line's two
 * copies the Python steps make per record. */
static PyObject *seal(PyObject *self, PyObject *args) {
    Py_buffer raw, label;
    PyObject *key, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*O", &raw, &label, &key)) return NULL;
    if (key != Py_None && !PyBytes_CheckExact(key)) {  /* what Chain holds is bytes; anything else: Python's */
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    /* The hash is made below as a str of maxchar 127 (compact ASCII) with
     * the label's bytes copied in: a byte past 0x7f there would be a str
     * whose data is not its characters (isascii() True with "é" inside,
     * encode() handing back invalid UTF-8 into the archive). HMAC takes the
     * key's length as an int: a longer key would be hashed truncated.
     * Both declined: the Python steps seal. */
    int ascii = 1;
    for (Py_ssize_t j = 0; j < label.len; j++) if (((const unsigned char *)label.buf)[j] > 127) { ascii = 0; break; }
    if (!ascii || (key != Py_None && PyBytes_GET_SIZE(key) > INT_MAX)) {
        Py_INCREF(Py_None);
        result = Py_None;
        goto done;
    }
    unsigned char *buf = PyMem_Malloc((size_t)raw.len * 2 + 1);  /* the canonical bytes, then scratch */
    if (buf == NULL) { PyErr_NoMemory(); goto done; }
    int rc = canon_into((const unsigned char *)raw.buf, raw.len, buf, buf + raw.len);
    if (rc != 0) {
        PyMem_Free(buf);
        if (rc == 1) { Py_INCREF(Py_None); result = Py_None; }
        goto done;
    }
    unsigned char md[32];
    if (key == Py_None) {
        SHA256(buf, (size_t)raw.len, md);
    } else {
        unsigned int mdlen = 0;
        if (HMAC(EVP_sha256(), PyBytes_AS_STRING(key), (int)PyBytes_GET_SIZE(key), buf, (size_t)raw.len,
                 md, &mdlen) == NULL || mdlen != 32) {
            PyMem_Free(buf);
            PyErr_SetString(PyExc_RuntimeError, "_leaf.seal: HMAC failed");
            goto done;
        }
    }
    PyMem_Free(buf);
    Py_ssize_t hlen = label.len + 64;
    PyObject *hash = PyUnicode_New(hlen, 127);
    Py_ssize_t llen = raw.len - 1 + 9 + hlen + 3;  /* raw without "}", ,"hash":" hash "}\n */
    PyObject *line = PyBytes_FromStringAndSize(NULL, llen);
    if (hash == NULL || line == NULL) { Py_XDECREF(hash); Py_XDECREF(line); goto done; }
    unsigned char *h = PyUnicode_1BYTE_DATA(hash);
    memcpy(h, label.buf, (size_t)label.len);
    for (int j = 0; j < 32; j++) { h[label.len + 2 * j] = HEX[md[j] >> 4]; h[label.len + 2 * j + 1] = HEX[md[j] & 15]; }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(line);
    memcpy(o, raw.buf, (size_t)raw.len - 1);
    o += raw.len - 1;
    memcpy(o, ",\"hash\":\"", 9);
    memcpy(o + 9, h, (size_t)hlen);
    memcpy(o + 9 + hlen, "\"}\n", 3);
    result = PyTuple_Pack(2, hash, line);
    Py_DECREF(hash);
    Py_DECREF(line);
done:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&label);
    return result;
}

