/* Part of _leaf.c (one translation unit; the module's digest covers every
 * _leaf* part): JSON's grammar checked in full over an archive line, the
 * spans of its top-level values found by a cursor. */
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
