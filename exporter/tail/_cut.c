/* Optional C accelerator of exporter/tail/lines.py: LineCutter's bulk step,
 * a run of complete lines cut into Line objects in one pass.
 *
 * configure(Line, Chunk)
 *     The Line class (a __slots__ class whose __init__ only assigns its
 *     fields) and the _Chunk class. Each slot's offset is read from its member
 *     descriptor once; cut() then fills a new instance's slots directly
 *     instead of running __init__ (the Python call is most of a line's cost).
 *
 * cut(buf, start, end, k, base, chunk, out) -> (next, invalid, data)
 *     Cuts buf[start:end] at each "\n", at most k lines (k < 0: no limit),
 *     appending to the list out, for each line, what lines.py's _bulk
 *     appends: Line(text, nbytes, chunk, False, False, cr, end offset), text
 *     the line's bytes less the "\n" and the cr "\r" before it, decoded as
 *     UTF-8 (bytes.decode("utf-8"), else "replace" and the line counted in
 *     invalid), the end offset base + the bytes cut so far. Bytes after the
 *     last "\n" (or the k-th) are left. next: where the next line starts in
 *     buf; data: buf[start:next] as bytes (the chunk's, for positions).
 *     The caller has checked that no line holds a NUL or exceeds the line
 *     limit (the line-by-line path handles those); nothing here relies on it.
 *
 * lines.py's _bulk is the reference; tests/test_cut_c.py compares the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif
#ifndef Py_READONLY
#define Py_READONLY READONLY
#endif

static PyTypeObject *line_type = NULL, *chunk_type = NULL;
static Py_ssize_t o_text, o_nbytes, o_truncated, o_partial, o_cr, o_pos, o_end;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static int slot_offset(PyTypeObject *t, const char *name, Py_ssize_t *off) {
    PyObject *d = PyObject_GetAttrString((PyObject *)t, name);
    if (d == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s has no field %s", t->tp_name, name);
        }
        return -1;
    }
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && PyDescr_TYPE(d) == t;
    if (ok) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        ok = m->type == Py_T_OBJECT_EX && !(m->flags & Py_READONLY) && m->offset >= (Py_ssize_t)sizeof(PyObject)
             && m->offset + (Py_ssize_t)sizeof(PyObject *) <= t->tp_basicsize;
        *off = m->offset;
    }
    Py_DECREF(d);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s.%s is not a plain __slots__ member", t->tp_name, name);
    return ok ? 0 : -1;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyTypeObject *lt, *ct;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &lt, &PyType_Type, &ct))
        return NULL;
    if (lt->tp_itemsize != 0 || lt->tp_dictoffset != 0 || lt->tp_alloc == NULL || !PyType_IS_GC(lt)) {
        PyErr_SetString(PyExc_TypeError, "Line must be a __slots__ class (object slots, no __dict__)");
        return NULL;
    }
    if (slot_offset(lt, "text", &o_text) < 0 || slot_offset(lt, "nbytes", &o_nbytes) < 0
        || slot_offset(lt, "truncated", &o_truncated) < 0 || slot_offset(lt, "partial", &o_partial) < 0
        || slot_offset(lt, "cr", &o_cr) < 0 || slot_offset(lt, "_pos", &o_pos) < 0
        || slot_offset(lt, "_end", &o_end) < 0)
        return NULL;
    Py_INCREF(lt);
    Py_INCREF(ct);
    Py_XSETREF(line_type, lt);
    Py_XSETREF(chunk_type, ct);
    Py_RETURN_NONE;
}

/* A new Line with every slot set; steals text. */
static PyObject *new_line(PyObject *text, Py_ssize_t nbytes, PyObject *chunk, Py_ssize_t cr, long long end) {
    PyObject *nb = PyLong_FromSsize_t(nbytes), *c = PyLong_FromSsize_t(cr), *e = PyLong_FromLongLong(end);
    PyObject *line = (nb && c && e) ? line_type->tp_alloc(line_type, 0) : NULL;
    if (line == NULL) {
        Py_DECREF(text);
        Py_XDECREF(nb);
        Py_XDECREF(c);
        Py_XDECREF(e);
        return NULL;
    }
    /* Not tracked by the cycle collector (as CPython does for a tuple of
     * atomic values): a Line refers to its text, ints, bools and its chunk
     * (bytes, the frozen position builder), later to its position dict; none
     * of them can lead back to a Line, so a Line is never part of a cycle.
     * Tracked, a batch of thousands of Lines is traversed by every young
     * collection and, surviving its batch, counts towards full collections
     * of the whole heap. tp_alloc returns zeroed slots: nothing to release. */
    PyObject_GC_UnTrack(line);
    SLOT(line, o_text) = text;
    SLOT(line, o_nbytes) = nb;
    Py_INCREF(chunk);
    SLOT(line, o_pos) = chunk;
    SLOT(line, o_end) = e;
    Py_INCREF(Py_False);
    SLOT(line, o_truncated) = Py_False;
    Py_INCREF(Py_False);
    SLOT(line, o_partial) = Py_False;
    SLOT(line, o_cr) = c;
    return line;
}

static PyObject *cut(PyObject *self, PyObject *args) {
    PyObject *bufobj, *chunk, *out;
    Py_ssize_t start, end, k;
    long long base;
    if (!PyArg_ParseTuple(args, "OnnnLOO!", &bufobj, &start, &end, &k, &base, &chunk, &PyList_Type, &out))
        return NULL;
    if (line_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cut.configure() was not called");
        return NULL;
    }
    if (!Py_IS_TYPE(chunk, chunk_type)) {
        PyErr_SetString(PyExc_TypeError, "chunk must be a _Chunk");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start/end outside the buffer");
        return NULL;
    }
    const char *s = (const char *)view.buf;
    Py_ssize_t i = start, n = 0, invalid = 0;
    while (k < 0 || n < k) {
        const char *p = s + i;
        const char *nl = memchr(p, '\n', (size_t)(end - i));
        if (nl == NULL)
            break;
        Py_ssize_t size = nl - p + 1, blen = nl - p;
        while (blen > 0 && p[blen - 1] == '\r')
            blen--;
        PyObject *text = PyUnicode_DecodeUTF8(p, blen, NULL);
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto fail;
            PyErr_Clear();
            invalid++;
            text = PyUnicode_DecodeUTF8(p, blen, "replace");
            if (text == NULL)
                goto fail;
        }
        i += size;
        PyObject *line = new_line(text, size, chunk, size - 1 - blen, base + (i - start));
        if (line == NULL)
            goto fail;
        int r = PyList_Append(out, line);
        Py_DECREF(line);
        if (r < 0)
            goto fail;
        n++;
    }
    PyObject *data = PyBytes_FromStringAndSize(s + start, i - start);
    PyBuffer_Release(&view);
    if (data == NULL)
        return NULL;
    return Py_BuildValue("nnN", i, invalid, data);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(Line, Chunk)"},
    {"cut", cut, METH_VARARGS, "cut(buf, start, end, k, base, chunk, out) -> (next, invalid, data)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cut", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cut(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef CUT_SOURCE_SHA256
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", CUT_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
