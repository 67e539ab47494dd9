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

typedef struct { const unsigned char *s; Py_ssize_t n, i; } Cur;

static int scan_value(Cur *c, int depth);

static int is_hex(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* 1 for a byte a string holds as is (not '"', '\\' or a control character):
 * the scan skips runs of them in a tight loop (prompts are long). */
static unsigned char plain[256];

static void init_plain(void) {
    for (int b = 0x20; b < 256; b++) plain[b] = b != '"' && b != '\\';
}

static int scan_string(Cur *c) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i, n = c->n;
    if (i >= n || s[i] != '"') return -1;
    i++;
    for (;;) {
        while (i < n && plain[s[i]]) i++;
        if (i >= n) return -1;
        unsigned char ch = s[i];
        if (ch == '"') { c->i = i + 1; return 0; }
        if (ch < 0x20) return -1;
        if (ch == '\\') {
            if (i + 1 >= n) return -1;
            unsigned char e = s[i + 1];
            if (e == 'u') {
                if (i + 5 >= n || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) || !is_hex(s[i + 4]) || !is_hex(s[i + 5]))
                    return -1;
                i += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                i += 2;
            } else {
                return -1;
            }
            continue;
        }
        i++;
    }
}

static int lit(Cur *c, const char *w) {
    Py_ssize_t k = (Py_ssize_t)strlen(w);
    if (c->i + k > c->n || memcmp(c->s + c->i, w, (size_t)k) != 0) return -1;
    c->i += k;
    return 0;
}

static int digits(Cur *c) {
    Py_ssize_t st = c->i;
    while (c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9') c->i++;
    return c->i > st ? 0 : -1;
}

static int scan_number(Cur *c) {
    if (c->i < c->n && c->s[c->i] == '-') {
        c->i++;
        if (c->i < c->n && c->s[c->i] == 'I') return lit(c, "Infinity");
    }
    if (c->i >= c->n) return -1;
    if (c->s[c->i] == '0') c->i++;
    else if (c->s[c->i] >= '1' && c->s[c->i] <= '9') digits(c);
    else return -1;
    if (c->i < c->n && c->s[c->i] == '.') { c->i++; if (digits(c)) return -1; }
    if (c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
        c->i++;
        if (c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-')) c->i++;
        if (digits(c)) return -1;
    }
    return 0;
}

static int scan_value(Cur *c, int depth) {
    if (c->i >= c->n) return -1;
    unsigned char ch = c->s[c->i];
    switch (ch) {
    case '"': return scan_string(c);
    case 't': return lit(c, "true");
    case 'f': return lit(c, "false");
    case 'n': return lit(c, "null");
    case 'N': return lit(c, "NaN");
    case 'I': return lit(c, "Infinity");
    case '{':
        if (depth >= MAX_DEPTH) return -1;
        c->i++;
        if (c->i < c->n && c->s[c->i] == '}') { c->i++; return 0; }
        for (;;) {
            if (scan_string(c)) return -1;
            if (c->i >= c->n || c->s[c->i] != ':') return -1;
            c->i++;
            if (scan_value(c, depth + 1)) return -1;
            if (c->i >= c->n) return -1;
            if (c->s[c->i] == ',') { c->i++; continue; }
            if (c->s[c->i] == '}') { c->i++; return 0; }
            return -1;
        }
    case '[':
        if (depth >= MAX_DEPTH) return -1;
        c->i++;
        if (c->i < c->n && c->s[c->i] == ']') { c->i++; return 0; }
        for (;;) {
            if (scan_value(c, depth + 1)) return -1;
            if (c->i >= c->n) return -1;
            if (c->s[c->i] == ',') { c->i++; continue; }
            if (c->s[c->i] == ']') { c->i++; return 0; }
            return -1;
        }
    default:
        if (ch == '-' || (ch >= '0' && ch <= '9')) return scan_number(c);
        return -1;
    }
}

static int chain_string(Cur *c) {
    const unsigned char *s = c->s;
    if (c->i >= c->n || s[c->i] != '"') return -1;
    Py_ssize_t i = c->i + 1;
    while (i < c->n && s[i] >= 0x20 && s[i] <= 0x7e && s[i] != '"' && s[i] != '\\') i++;
    if (i >= c->n || s[i] != '"') return -1;
    c->i = i + 1;
    return 0;
}

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
    PyObject *lines, *nodes;
    Py_buffer salts;
    unsigned long long size;
    if (!configured()) return NULL;
    if (!PyArg_ParseTuple(args, "Oy*KO", &lines, &salts, &size, &nodes)) return NULL;
    PyObject *result = NULL, *entries = NULL, *out = NULL;
    unsigned char *buf = NULL;
    Py_ssize_t bufcap = 0;
    unsigned char stack[64][32];
    if (!PyList_CheckExact(lines) || !PyList_CheckExact(nodes)) {
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

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *ks, *cs;
    Py_buffer lp, cp;
    if (!PyArg_ParseTuple(args, "O!O!y*y*", &PyTuple_Type, &ks, &PyTuple_Type, &cs, &lp, &cp)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(ks);
    if (n < 3 || n > MAX_KEYS || PyTuple_GET_SIZE(cs) != n) {
        PyBuffer_Release(&lp); PyBuffer_Release(&cp);
        PyErr_SetString(PyExc_ValueError, "_leaf.configure: bad key tuples");
        return NULL;
    }
    for (int k = 0; k < nkeys; k++) PyMem_Free(keys[k]);
    nkeys = 0;
    seq_key = -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *key = PyTuple_GET_ITEM(ks, k);
        if (!PyBytes_Check(key)) {
            PyBuffer_Release(&lp); PyBuffer_Release(&cp);
            PyErr_SetString(PyExc_TypeError, "_leaf.configure: keys must be bytes");
            return NULL;
        }
        klens[k] = PyBytes_GET_SIZE(key);
        keys[k] = PyMem_Malloc((size_t)klens[k] + 1);
        memcpy(keys[k], PyBytes_AS_STRING(key), (size_t)klens[k] + 1);
        content[k] = PyObject_IsTrue(PyTuple_GET_ITEM(cs, k));
        if (klens[k] == 3 && memcmp(keys[k], "seq", 3) == 0) seq_key = (int)k;
        nkeys = (int)k + 1;
    }
    PyMem_Free(leaf_prefix); PyMem_Free(content_prefix);
    leaf_prefix = PyMem_Malloc((size_t)lp.len + 1); memcpy(leaf_prefix, lp.buf, (size_t)lp.len); leaf_prefix_len = lp.len;
    content_prefix = PyMem_Malloc((size_t)cp.len + 1); memcpy(content_prefix, cp.buf, (size_t)cp.len); content_prefix_len = cp.len;
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
