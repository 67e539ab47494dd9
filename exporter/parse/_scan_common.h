/* _scan.c's shared part: the line view, character classes, the Python objects
 * configure() hands over. One translation unit (_scan.c includes these), so
 * everything stays static. */
#ifndef VLLM_AUDIT_SCAN_COMMON_H
#define VLLM_AUDIT_SCAN_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *g_event;        /* exporter.events.Event */
static PyObject *g_header_fn;    /* text -> (Header, end) | None */
static PyObject *g_params_fn;    /* sampling_params(s, f) */
static PyObject *g_body_fn;      /* body_line.body_event(s, start, rid, when, projected) */
static PyObject *g_access;       /* ACCESS */
static PyObject *g_kinds[5];     /* OUTPUT, OUTPUT_DETAILS, ADDED, FINISHED, DETAILS */
static PyObject *g_received;     /* RECEIVED */
static PyObject *g_headers;      /* dict: header text -> Header */
static PyObject *g_info[3];      /* "", "delta", "complete" */
static PyObject *k_stream_info, *k_output_token_ids, *k_output_token_count, *k_output,
    *k_finish_reason, *k_prompt, *k_prompt_token_ids, *k_prompt_token_count, *k_params,
    *k_params_open;

/* Event's slot offsets (kind, request_id, when, data), found by configure()
 * when Event is the plain slots dataclass it is: then an event is allocated
 * and its four slots filled here, as its generated __init__ would, without
 * a Python call per line. 0: call Event() instead. */
static Py_ssize_t g_event_off[4];

#define HEADER_CACHE_MAX 4096
#define MAX_FIELDS 16

enum { K_OUTPUT, K_OUTPUT_DETAILS, K_ADDED, K_FINISHED, K_DETAILS };

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t n;
    PyObject *s;
} Line;

#define CH(L, i) PyUnicode_READ((L)->kind, (L)->data, (i))

/* Declining is always correct; these keep the code flat. */
#define DECLINE ((PyObject *)NULL)

/* One pass, no strlen: the literal's NUL ends the comparison, the line's
 * end fails it. */
static inline int starts(const Line *L, Py_ssize_t i, const char *lit) {
    if (i < 0) return 0;
    for (Py_ssize_t j = 0; lit[j]; j++)
        if (i + j >= L->n || CH(L, i + j) != (Py_UCS4)(unsigned char)lit[j]) return 0;
    return 1;
}

static int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static int is_graph(Py_UCS4 c) { return c >= 0x21 && c <= 0x7e; } /* ASCII, never \s in Python */
static int is_word(Py_UCS4 c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_';
}

static int file_is(PyObject *file, const char *const *names) {
    for (; *names; names++)
        if (PyUnicode_CompareWithASCIIString(file, *names) == 0) return 1;
    return 0;
}

static const char *const REQUEST_LOGGER_FILES[] = {"logger.py", "request_logger.py", NULL};
static const char *const ENGINE_FILES[] = {"async_llm.py", "engine.py", "async_llm_engine.py", NULL};

#endif /* VLLM_AUDIT_SCAN_COMMON_H */
