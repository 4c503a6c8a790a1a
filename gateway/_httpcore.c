/* HTTP/1.1 exchanges in C: the per-request byte work of gateway/http/proxy.py, for the requests that need
 * nothing else (see "What is served here").
 *
 * Why: an HTTP request through a sidecar spent most of its CPU in the interpreter (parser callbacks per header,
 * head rendering, framing decisions, transport and TLS plumbing: about 40 Python calls per request and side).
 * Here a downstream connection's bytes are read, decrypted, parsed and framed in C; Python is called once per
 * request for the decision (``on_request``: intentions, route, balancing, breakers, which pooled connection) and
 * once for the accounting (``token.finish``: metrics, access log, the pool), plus on the rare events it decides
 * (an upstream reset: retry or fail; a response status a retry policy names).
 *
 * What is served here: HTTP/1.1 requests with no body, a Content-Length or ``Transfer-Encoding: chunked``, to an
 * upstream HTTP/1.x connection. Anything else (HTTP/1.0, ``Upgrade``, ``Expect``, other transfer codings, a
 * Connection header naming other fields) is handed back to the Python proxy, which knows all of HTTP/1.1: the
 * connection becomes an L4 relay (gateway/_relaycore.c) between the client and a socketpair whose other end is
 * served by a gateway.http.proxy.ServerConnection. A malformed request gets 400 here and the connection closes.
 *
 * Semantics are proxy.py's: hop-by-hop fields removed (RFC 9110 §7.6.1) and the ones a Connection header names,
 * X-Forwarded-For/Forwarded extended, x-request-id kept or made, a new traceparent span per hop; chunked bodies
 * pass through as they are (their framing is checked to find the end), close-delimited answers are re-framed as
 * chunked; a request body is kept for a replay (up to REPLAY_LIMIT) only when the decision asks for it; the
 * request timeout runs from the end of the request to the response head (Python's ticker reads ``deadline``);
 * a full write queue towards one end stops reading from the end that fills it.
 *
 * Lifetime: the core holds a reference to each connection while its socket is open; an exchange holds the pair
 * (server and client reference each other until the exchange lets go). A connection whose socket closed goes
 * on the core's dead list; Python hears of it (``on_close``, the pool's ``lost_cb``) after the poll batch.
 * Buffers are freed only with the object, never at close: a close can happen under a caller still reading them.
 */
#include "_core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#define HEAD_MAX (64 * 1024)
#define BODY_BUFFER_LIMIT (256 * 1024) /* request body held while no upstream connection is attached */
#define REPLAY_LIMIT (256 * 1024)      /* request bytes kept for a retry; past it, none */
#define LINE_LIMIT 4096                /* a chunk-size or trailer line */
#define READ_BUDGET (256 * 1024)       /* bytes read per connection before others get a turn */
#define READ_SPACE 16384

enum { P_PEER = 1, P_BUFFER = 2, P_PIPELINE = 4 };   /* why a connection is not read */
enum { X_IDLE, X_WAIT, X_ATTACHED, X_RESPONDING };  /* a server connection's exchange */
enum { B_DONE, B_LENGTH, B_CHUNKED, B_CLOSE };      /* framing of the message being received */
enum { C_SIZE, C_DATA, C_DATA_END, C_TRAILER };     /* inside chunked framing */
enum { R_IDLE, R_HEAD, R_BODY };                    /* a client connection's response */

typedef struct HttpConn {
    PyObject_HEAD
    PyObject *dict; /* Python's attributes: the pool, key, lost_cb of a pooled connection */
    Core *core;
    End s;
    PyObject *sslref;
    int server;
    int closed;   /* no more use: closing (queue flushing) or gone */
    int gone;     /* the socket is closed */
    int fallen;   /* handed back to Python through a socketpair */
    int kicked;
    int busy;
    int clean_eof; /* the end of stream was a close_notify (TLS) or a FIN (plaintext) */
    size_t hscan;  /* how much of the buffered input was searched for a head's end */
    int hpause;   /* P_* reasons */
    int gathering;
    char *in; /* plaintext received, not consumed yet */
    size_t in_off, in_len, in_cap;
    char *w; /* plaintext gathered for one write (one TLS record, one send) */
    size_t w_len, w_cap;
    int bstate, cstate;
    uint64_t remaining;
    struct HttpConn *peer; /* the other connection of the current exchange */
    double idle_since;
    unsigned long long rx_total;
    /* client connections */
    int rstate, reusable, head_req;
    /* server connections */
    PyObject *on_request, *on_fallback, *on_close, *token, *fin_client, *peer_ip, *extra_resp;
    PyObject *on_ticket; /* client: called once the TLS 1.3 session ticket arrived (kept for resumption) */
    PyObject *resp_extra, *resp_drop;
    char ip[64];
    int x, req_done, keep_alive, draining, is_head, chunked, check_status, replay, ever_sent, in_cb;
    int finish_pending, lost_pending;
    char *raw; /* the request head as received */
    size_t raw_len, raw_cap, method_len, url_off, url_len;
    char *up; /* the head rendered for upstream, then body bytes not sent yet or kept for a replay */
    size_t up_len, up_cap, head_len;
    double started, head_time, deadline, timeout;
    unsigned long long rx, tx;
    char reqid[40], trace[64];
    const char *reqid_ptr; /* the x-request-id sent: the client's (in raw) or ours (reqid) */
    int reqid_len, trace_len, status;
} HttpConn;

static PyObject *str_finish, *str_upstream_lost, *str_on_head, *str_lost_cb;

static void h_abort(HttpConn *c);
static void h_close(HttpConn *c);
static void h_kick(HttpConn *c);
static void srv_process(HttpConn *s);
static void cli_process(HttpConn *c);
static void ex_complete(HttpConn *s, HttpConn *reuse, int keep);
static void local_response(HttpConn *s, int status, const char *reason, size_t reason_len, const char *extra,
                           size_t extra_len);

double mono_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* time.monotonic()'s clock on Linux */
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------ buffers */

static int buf_reserve(char **b, size_t *cap, size_t need) {
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *p = realloc(*b, n);
    if (p == NULL)
        return -1;
    *b = p;
    *cap = n;
    return 0;
}

static int buf_add(char **b, size_t *len, size_t *cap, const char *data, size_t n) {
    if (buf_reserve(b, cap, *len + n) < 0)
        return -1;
    memcpy(*b + *len, data, n);
    *len += n;
    return 0;
}

static void consume(HttpConn *c, size_t n) {
    c->hscan = 0; /* what is scanned for a head starts after what was consumed */
    c->in_off += n;
    c->in_len -= n;
    if (c->in_len == 0)
        c->in_off = 0;
}

/* ------------------------------------------------------------------------------------------ the socket */

static void h_watch(HttpConn *c) {
    End *x = &c->s;
    if (x->fd < 0)
        return;
    uint32_t want = 0;
    if (!x->rd_eof && !c->hpause && !x->close_pending && !c->closed)
        want |= EPOLLIN;
    if (x->out_len)
        want |= EPOLLOUT;
    if (want == x->events)
        return;
    struct epoll_event ev;
    ev.events = want;
    ev.data.ptr = x;
    epoll_ctl(c->core->epfd, EPOLL_CTL_MOD, x->fd, &ev);
    x->events = want;
}

static void h_pause(HttpConn *c, int why) {
    if (c->hpause & why)
        return;
    c->hpause |= why;
    h_watch(c);
}

static void h_resume(HttpConn *c, int why) {
    if (!(c->hpause & why))
        return;
    c->hpause &= ~why;
    h_watch(c);
    if (!c->hpause)
        h_kick(c); /* input may wait in our buffer or inside OpenSSL: no socket event would announce it */
}

/* Bytes for c's socket: sent now if nothing is queued before them, else queued; past HIGH_WATER the
 * connection feeding this one is paused. -1 (errno) on a socket error. */
static int h_sock_send(HttpConn *c, const char *data, size_t len) {
    End *x = &c->s;
    int k = end_send(x, data, len);
    if (k <= 0)
        return k;
    h_watch(c);
    if (x->out_len > HIGH_WATER && c->peer != NULL)
        h_pause(c->peer, P_PEER);
    return 0;
}

int http_sock_write(End *x, const char *data, size_t len) { return h_sock_send((HttpConn *)x->owner, data, len); }

static void h_flush_out(HttpConn *c) {
    End *x = &c->s;
    if (end_flush(x) < 0) {
        h_abort(c);
        return;
    }
    if (c->peer != NULL && (c->peer->hpause & P_PEER) && x->out_len < LOW_WATER)
        h_resume(c->peer, P_PEER);
    if (x->out_len == 0 && x->close_pending) {
        x->close_pending = 0;
        h_abort(c); /* everything went: now the descriptor */
        return;
    }
    h_watch(c);
}

/* Plaintext to c's peer on the wire (encrypted on a TLS connection). */
static void h_emit(HttpConn *c, const char *data, size_t len) {
    End *x = &c->s;
    if (c->gone || len == 0)
        return;
    if (x->ssl == NULL) {
        if (h_sock_send(c, data, len) < 0)
            h_abort(c);
        return;
    }
    int cork = len > 16384 && x->out_len == 0; /* several records: gathered into one send() */
    x->cork = cork;
    ERR_clear_error();
    int n = SSL_write(x->ssl, data, (int)len);
    x->cork = 0;
    if (n <= 0 || x->sock_err) {
        ERR_clear_error();
        h_abort(c);
        return;
    }
    if (cork && x->out_len) {
        h_flush_out(c);
        if (!c->gone && x->out_len > HIGH_WATER && c->peer != NULL)
            h_pause(c->peer, P_PEER);
    }
}

static void h_write(HttpConn *c, const char *data, size_t len) {
    if (c->gathering) {
        if (buf_add(&c->w, &c->w_len, &c->w_cap, data, len) < 0)
            h_abort(c);
        return;
    }
    h_emit(c, data, len);
}

static void h_gather_end(HttpConn *c) {
    if (--c->gathering > 0 || c->w_len == 0)
        return;
    size_t n = c->w_len;
    c->w_len = 0;
    h_emit(c, c->w, n);
    if (c->w_cap > 4 * READ_CHUNK) {
        free(c->w);
        c->w = NULL;
        c->w_cap = 0;
    }
}

/* ------------------------------------------------------------------------------------------ ends */

static void unlink_pair(HttpConn *s) {
    HttpConn *c = s->peer;
    if (c == NULL)
        return;
    s->peer = NULL;
    c->peer = NULL;
    if (s->hpause & P_PEER)
        h_resume(s, P_PEER);
    if (c->hpause & P_PEER)
        h_resume(c, P_PEER);
    Py_DECREF(c);
    Py_DECREF(s);
}

static void srv_lost(HttpConn *s);
static void cli_lost(HttpConn *c);

/* The socket closes now; what depended on it follows (the exchange fails over or ends), Python hears after
 * the poll batch. */
static void h_gone(HttpConn *c) {
    if (c->gone)
        return;
    Py_INCREF(c);
    End *x = &c->s;
    if (x->fd >= 0) {
        epoll_ctl(c->core->epfd, EPOLL_CTL_DEL, x->fd, NULL);
        close(x->fd);
        x->fd = -1;
    }
    x->out_len = 0;
    x->events = 0;
    c->closed = 1;
    c->gone = 1;
    if (c->server)
        srv_lost(c);
    else
        cli_lost(c);
    if (PyList_Append(c->core->dead, (PyObject *)c) < 0)
        PyErr_WriteUnraisable((PyObject *)c);
    Py_DECREF(c);
}

static void h_abort(HttpConn *c) {
    c->s.close_pending = 0;
    h_gone(c);
}

/* Graceful: what is gathered and queued goes first (with close_notify on TLS), then the descriptor. */
static void h_close(HttpConn *c) {
    if (c->closed)
        return;
    if (c->w_len && !c->gone) {
        size_t n = c->w_len;
        c->w_len = 0;
        c->gathering = 0;
        h_emit(c, c->w, n);
        if (c->gone)
            return;
    }
    c->closed = 1;
    End *x = &c->s;
    if (x->ssl != NULL && !x->wr_eof) {
        x->wr_eof = 1;
        ERR_clear_error();
        SSL_shutdown(x->ssl);
        ERR_clear_error();
    }
    if (x->out_len) {
        x->close_pending = 1;
        h_watch(c);
    } else {
        h_gone(c);
    }
}

static void h_kick(HttpConn *c) {
    if (c->kicked || c->closed)
        return;
    if (PyList_Append(c->core->kicks, (PyObject *)c) < 0) {
        PyErr_WriteUnraisable((PyObject *)c);
        return;
    }
    c->kicked = 1;
}

/* ------------------------------------------------------------------------------------------ parsing */

static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1,
    ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1,
    ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1,
    ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

#define IS(name, lit) ((name##_len) == sizeof(lit) - 1 && strncasecmp((name), (lit), sizeof(lit) - 1) == 0)

typedef struct {
    const char *name, *value;
    size_t name_len, value_len;
} Field;

/* One header line at p (up to its LF): -1 malformed. Values: visible ASCII, obs-text, SP and HTAB (RFC 9110
 * §5.5); no obs-fold (RFC 9112 §5.2: a server rejects it). */
static int parse_field(const char *p, const char *end, Field *f) {
    const char *q = p;
    while (q < end && TCHAR[(unsigned char)*q])
        q++;
    if (q == p || q >= end || *q != ':')
        return -1;
    f->name = p;
    f->name_len = (size_t)(q - p);
    q++;
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    const char *v = q;
    for (; q < end; q++) {
        unsigned char ch = (unsigned char)*q;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return -1;
    }
    while (q > v && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    f->value = v;
    f->value_len = (size_t)(q - v);
    return 0;
}

/* Lines of a head: each call gives the next line [*ls, *le) without its CRLF; 0 at the blank line, -1 for a
 * bare LF or CR. */
static int next_line(const char **pos, const char *end, const char **ls, const char **le) {
    const char *p = *pos;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL || nl == p || nl[-1] != '\r')
        return -1;
    *ls = p;
    *le = nl - 1;
    *pos = nl + 1;
    for (const char *q = p; q < nl - 1; q++)
        if (*q == '\r')
            return -1;
    return *le > *ls ? 1 : 0;
}

static int parse_length(const char *v, size_t n, uint64_t *out) {
    if (n == 0 || n > 18)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 0;
}

/* Each comma-separated token of a Connection value: 1 close, 2 keep-alive, 4 upgrade, 8 anything else. */
static int connection_tokens(const char *v, size_t n) {
    int seen = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e == s)
            continue;
        const char *t = v + s;
        size_t t_len = e - s;
        if (IS(t, "close"))
            seen |= 1;
        else if (IS(t, "keep-alive"))
            seen |= 2;
        else if (IS(t, "upgrade"))
            seen |= 4;
        else
            seen |= 8;
    }
    return seen;
}

enum { HEAD_MORE = 0, HEAD_OK = 1, HEAD_SLOW = 2, HEAD_BAD = -1, HEAD_TOO_LARGE = -2 };

typedef struct {
    size_t len; /* the head with its blank line */
    size_t method_len, url_off, url_len;
    int chunked, keep_alive, has_length;
    uint64_t length;
} Req;

/* Where a head ends in buf[0..n): the blank line, searched from ``*from`` (what earlier calls saw, less the 3
 * bytes an end could straddle: a head sent a byte at a time is scanned once, not once per byte). NULL: not
 * yet (*from updated), or a bare LF (*bad). */
static const char *head_end(const char *buf, size_t n, size_t *from, int *bad) {
    size_t k = *from > 3 ? *from - 3 : 0;
    *bad = 0;
    if (k >= n)
        return NULL;
    const char *m = n - k >= 4 ? memmem(buf + k, n - k, "\r\n\r\n", 4) : NULL;
    if (m == NULL) {
        *bad = memmem(buf + k, n - k, "\n\n", 2) != NULL; /* bare LF line ends */
        *from = n;
    }
    return m;
}

static int parse_request(const char *buf, size_t n, size_t *from, Req *r) {
    int bad;
    const char *end_mark = head_end(buf, n, from, &bad);
    if (end_mark == NULL) {
        if (bad)
            return HEAD_BAD;
        return n > HEAD_MAX ? HEAD_TOO_LARGE : HEAD_MORE;
    }
    const char *end = end_mark + 4;
    if ((size_t)(end - buf) > HEAD_MAX)
        return HEAD_TOO_LARGE;
    memset(r, 0, sizeof *r);
    r->len = (size_t)(end - buf);
    const char *pos = buf, *ls, *le;
    if (next_line(&pos, end, &ls, &le) != 1)
        return HEAD_BAD;
    /* request-line = method SP request-target SP HTTP-version (RFC 9112 §3) */
    const char *q = ls;
    while (q < le && TCHAR[(unsigned char)*q])
        q++;
    if (q == ls || q >= le || *q != ' ')
        return HEAD_BAD;
    r->method_len = (size_t)(q - ls);
    int slow = r->method_len == 7 && memcmp(ls, "CONNECT", 7) == 0; /* a tunnel: the Python proxy's */
    const char *u = ++q;
    while (q < le && (unsigned char)*q > 0x20 && *q != 0x7f)
        q++;
    if (q == u || q >= le || *q != ' ')
        return HEAD_BAD;
    r->url_off = (size_t)(u - buf);
    r->url_len = (size_t)(q - u);
    q++;
    size_t vlen = (size_t)(le - q);
    if (vlen == 8 && memcmp(q, "HTTP/1.1", 8) == 0)
        r->keep_alive = 1;
    else if (vlen == 8 && memcmp(q, "HTTP/1.0", 8) == 0)
        slow = 1; /* its keep-alive and framing rules: the Python proxy's */
    else
        return HEAD_BAD;
    int lengths = 0, te = 0;
    for (;;) {
        int k = next_line(&pos, end, &ls, &le);
        if (k < 0)
            return HEAD_BAD;
        if (k == 0)
            break;
        Field f;
        if (*ls == ' ' || *ls == '\t' || parse_field(ls, le, &f) < 0)
            return HEAD_BAD;
        const char *name = f.name;
        size_t name_len = f.name_len;
        if (IS(name, "content-length")) {
            uint64_t v;
            if (parse_length(f.value, f.value_len, &v) < 0 || (lengths && v != r->length))
                return HEAD_BAD;
            r->length = v;
            lengths = 1;
        } else if (IS(name, "transfer-encoding")) {
            const char *v = f.value;
            size_t v_len = f.value_len;
            te++;
            if (IS(v, "chunked") && te == 1)
                r->chunked = 1;
            else
                slow = 1;
        } else if (IS(name, "connection")) {
            int t = connection_tokens(f.value, f.value_len);
            if (t & 1)
                r->keep_alive = 0;
            if (t & (4 | 8))
                slow = 1;
        } else if (IS(name, "upgrade") || IS(name, "expect")) {
            slow = 1;
        }
    }
    if (lengths && te)
        return HEAD_BAD; /* request smuggling's classic: RFC 9112 §6.3 lets a server reject it */
    r->has_length = lengths;
    return slow ? HEAD_SLOW : HEAD_OK;
}

static int is_field_text(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return 0;
    }
    return 1;
}

/* Chunked framing in p[0..n) from state (*st, *rem). *used: how much is consumed (whole lines only: a partial
 * size or trailer line waits for more); *fwd (a prefix of it): what is forwarded as it came. The trailer
 * section is checked and dropped, as the Python proxy and Envoy (HTTP/1 trailers off by default) do: the
 * caller ends the message with its own CRLF once *done. -1 on bad framing (a size that is not hex, a control
 * byte in an extension, a trailer line that is no field, a missing CRLF). */
static int chunk_scan(int *st, uint64_t *rem, const char *p, size_t n, size_t *used, size_t *fwd, int *done) {
    size_t i = 0, fwd_end = 0;
    *done = 0;
    while (i < n) {
        switch (*st) {
        case C_DATA: {
            size_t k = n - i;
            if ((uint64_t)k > *rem)
                k = (size_t)*rem;
            i += k;
            *rem -= k;
            if (*rem == 0)
                *st = C_DATA_END;
            fwd_end = i;
            break;
        }
        case C_DATA_END:
            if (n - i < 2) {
                if (p[i] != '\r')
                    return -1;
                goto out;
            }
            if (p[i] != '\r' || p[i + 1] != '\n')
                return -1;
            i += 2;
            *st = C_SIZE;
            fwd_end = i;
            break;
        case C_SIZE:
        case C_TRAILER: {
            const char *nl = memchr(p + i, '\n', n - i);
            if (nl == NULL) {
                if (n - i > LINE_LIMIT)
                    return -1;
                goto out;
            }
            size_t len = (size_t)(nl - (p + i));
            if (len == 0 || p[i + len - 1] != '\r' || len > LINE_LIMIT)
                return -1;
            if (*st == C_TRAILER) {
                if (len > 1) {
                    Field f;
                    if (p[i] == ' ' || p[i] == '\t' || parse_field(p + i, p + i + len - 1, &f) < 0)
                        return -1;
                }
                i += len + 1;
                if (len == 1) {
                    *done = 1;
                    *used = i;
                    *fwd = fwd_end;
                    return 0;
                }
                break;
            }
            uint64_t v = 0;
            size_t d = 0;
            for (; d < len - 1; d++) {
                char ch = p[i + d];
                int h = (ch >= '0' && ch <= '9') ? ch - '0'
                        : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                        : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10
                                                   : -1;
                if (h < 0)
                    break;
                if (v >> 58)
                    return -1;
                v = v * 16 + (uint64_t)h;
            }
            if (d == 0)
                return -1;
            char after = p[i + d];
            if (d < len - 1 && after != ';' && after != ' ' && after != '\t')
                return -1;
            if (!is_field_text(p + i + d, len - 1 - d))
                return -1; /* chunk-ext (RFC 9112 §7.1.1): no control bytes, no bare CR */
            i += len + 1;
            if (v == 0) {
                *st = C_TRAILER;
            } else {
                *rem = v;
                *st = C_DATA;
            }
            fwd_end = i;
            break;
        }
        }
    }
out:
    *used = i;
    *fwd = fwd_end;
    return 0;
}

/* ------------------------------------------------------------------------------------------ ids */

static uint64_t rng[2];

static uint64_t rnd64(void) {
    /* xorshift128+: request and span ids name things, they guard nothing (as Python's random there) */
    uint64_t s1 = rng[0];
    const uint64_t s0 = rng[1];
    rng[0] = s0;
    s1 ^= s1 << 23;
    rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng[1] + s0;
}

static void hex64(char *out, uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
}

/* A UUID version 4 (RFC 9562 §5.4), as Envoy makes for x-request-id. */
static int new_request_id(char *out) {
    char h[32];
    uint64_t a = rnd64(), b = rnd64();
    a = (a & ~(0xFULL << 12)) | (0x4ULL << 12);
    b = (b & ~(0x3ULL << 62)) | (0x2ULL << 62);
    hex64(h, a);
    hex64(h + 16, b);
    memcpy(out, h, 8);
    out[8] = '-';
    memcpy(out + 9, h + 8, 4);
    out[13] = '-';
    memcpy(out + 14, h + 12, 4);
    out[18] = '-';
    memcpy(out + 19, h + 16, 4);
    out[23] = '-';
    memcpy(out + 24, h + 20, 12);
    return 36;
}

static int is_hex(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') || (p[i] >= 'A' && p[i] <= 'F')))
            return 0;
    return 1;
}

/* W3C trace context: keep the trace id and flags, a new span id per hop; a new trace when none (valid) came. */
static int new_trace_parent(char *out, const char *in, size_t n) {
    uint64_t span = rnd64();
    if (span == 0)
        span = 1; /* an all-zero id is invalid (W3C trace-context §3.2.2.4) */
    /* version "-" trace-id(32) "-" parent-id(16) "-" flags(2) */
    if (in != NULL && n >= 55 && in[2] == '-' && in[35] == '-' && in[52] == '-' && is_hex(in + 3, 32) &&
        is_hex(in + 36, 16) && is_hex(in + 53, 2) && (n == 55 || in[55] == '-')) {
        int zero = 1;
        for (int i = 3; i < 35; i++)
            if (in[i] != '0')
                zero = 0;
        if (!zero) {
            memcpy(out, in, 36);
            hex64(out + 36, span);
            out[52] = '-';
            memcpy(out + 53, in + 53, 2);
            return 55;
        }
    }
    uint64_t a = rnd64(), b = rnd64();
    if ((a | b) == 0)
        b = 1;
    memcpy(out, "00-", 3);
    hex64(out + 3, a);
    hex64(out + 19, b);
    out[35] = '-';
    hex64(out + 36, span);
    memcpy(out + 52, "-01", 3);
    return 55;
}

/* ------------------------------------------------------------------------------------------ rendering */

#define HOP(lit) {lit, sizeof(lit) - 1}
static const struct {
    const char *name;
    size_t len;
} HOP_BY_HOP[] = {HOP("connection"), HOP("keep-alive"), HOP("proxy-connection"), HOP("te"), HOP("trailer"),
                  HOP("transfer-encoding"), HOP("upgrade"), HOP("proxy-authenticate"), HOP("proxy-authorization")};

/* Per field of every head, both ways: lengths are compared first, known at compile time. */
static int is_hop(const char *name, size_t name_len) {
    for (size_t i = 0; i < sizeof HOP_BY_HOP / sizeof HOP_BY_HOP[0]; i++)
        if (HOP_BY_HOP[i].len == name_len && strncasecmp(name, HOP_BY_HOP[i].name, name_len) == 0)
            return 1;
    return 0;
}

/* ``drop``: a frozenset of lower-case field names (bytes), or None. */
static int in_drop(PyObject *drop, const char *name, size_t name_len) {
    if (drop == NULL || !PyAnySet_Check(drop) || PySet_GET_SIZE(drop) == 0 || name_len > 256)
        return 0;
    char low[256];
    for (size_t i = 0; i < name_len; i++) {
        char ch = name[i];
        low[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    PyObject *k = PyBytes_FromStringAndSize(low, (Py_ssize_t)name_len);
    if (k == NULL) {
        PyErr_Clear();
        return 0;
    }
    int r = PySet_Contains(drop, k);
    Py_DECREF(k);
    if (r < 0)
        PyErr_Clear();
    return r > 0;
}

#define PUT(b, s, n)                                                                                          \
    do {                                                                                                      \
        if (buf_add(&(b)->data, &(b)->len, &(b)->cap, (s), (n)) < 0)                                          \
            return -1;                                                                                        \
    } while (0)
#define PUTS(b, lit) PUT(b, lit, sizeof(lit) - 1)

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

/* The head sent upstream (gateway/http/headers.py render_request_head): the request line with ``url``, the
 * fields minus hop-by-hop ones and ``drop``, X-Forwarded-For (and an incoming Forwarded) extended with the
 * client, x-request-id kept or made, a new traceparent, chunked framing when the body is chunked, ``extra``. */
/* The values of every ``name`` field of the request head, joined with ", " (X-Forwarded-For, Forwarded: however
 * many lines came). 0 when there is none. */
static int join_values(HttpConn *s, Buf *b, const char *lit, size_t lit_len) {
    const char *pos = s->raw, *end = s->raw + s->raw_len, *ls, *le;
    int seen = 0;
    next_line(&pos, end, &ls, &le);
    while (next_line(&pos, end, &ls, &le) == 1) {
        Field f;
        if (parse_field(ls, le, &f) < 0 || f.name_len != lit_len || strncasecmp(f.name, lit, lit_len) != 0)
            continue;
        if (seen++)
            PUTS(b, ", ");
        PUT(b, f.value, f.value_len);
    }
    return seen;
}

static int render_request(HttpConn *s, Buf *b, const char *url, size_t url_len, const char *extra, size_t extra_len,
                          PyObject *drop) {
    const char *raw = s->raw, *end = s->raw + s->raw_len, *pos = raw, *ls, *le;
    PUT(b, raw, s->method_len);
    PUTS(b, " ");
    PUT(b, url, url_len);
    PUTS(b, " HTTP/1.1\r\n");
    next_line(&pos, end, &ls, &le);
    int xff = 0, fwd = 0;
    const char *trace = NULL;
    size_t trace_len = 0;
    s->reqid_ptr = NULL;
    s->reqid_len = 0;
    while (next_line(&pos, end, &ls, &le) == 1) {
        Field f;
        if (parse_field(ls, le, &f) < 0)
            continue;
        const char *name = f.name;
        size_t name_len = f.name_len;
        if (is_hop(name, name_len))
            continue;
        if (IS(name, "x-forwarded-for")) {
            xff = 1;
            continue;
        }
        if (IS(name, "forwarded")) {
            fwd = 1;
            continue;
        }
        if (IS(name, "traceparent")) {
            trace = f.value;
            trace_len = f.value_len;
            continue;
        }
        if (IS(name, "x-request-id")) { /* the last one, as headers.py */
            s->reqid_ptr = f.value; /* into raw, which lives as long as the exchange */
            s->reqid_len = (int)f.value_len;
        }
        if (in_drop(drop, name, name_len))
            continue;
        PUT(b, ls, (size_t)(le - ls));
        PUTS(b, "\r\n");
    }
    size_t ip_len = strlen(s->ip);
    if (xff || ip_len) {
        PUTS(b, "x-forwarded-for: ");
        int n = xff ? join_values(s, b, "x-forwarded-for", 15) : 0;
        if (n < 0)
            return -1;
        if (ip_len) {
            if (n)
                PUTS(b, ", ");
            PUT(b, s->ip, ip_len);
        }
        PUTS(b, "\r\n");
    }
    if (fwd) {
        PUTS(b, "forwarded: ");
        if (join_values(s, b, "forwarded", 9) < 0)
            return -1;
        if (ip_len) {
            /* RFC 7239 §6: an IPv6 node is quoted and bracketed */
            if (strchr(s->ip, ':') != NULL) {
                PUTS(b, ", for=\"[");
                PUT(b, s->ip, ip_len);
                PUTS(b, "]\"");
            } else {
                PUTS(b, ", for=");
                PUT(b, s->ip, ip_len);
            }
        }
        PUTS(b, "\r\n");
    }
    if (s->reqid_ptr == NULL || s->reqid_len == 0) {
        s->reqid_len = new_request_id(s->reqid);
        s->reqid_ptr = s->reqid;
        PUTS(b, "x-request-id: ");
        PUT(b, s->reqid, (size_t)s->reqid_len);
        PUTS(b, "\r\n");
    }
    s->trace_len = new_trace_parent(s->trace, trace, trace_len);
    PUTS(b, "traceparent: ");
    PUT(b, s->trace, (size_t)s->trace_len);
    PUTS(b, "\r\n");
    if (s->chunked)
        PUTS(b, "transfer-encoding: chunked\r\n");
    PUT(b, extra, extra_len);
    PUTS(b, "\r\n");
    return 0;
}

typedef struct {
    size_t len;
    int status, http11, chunked, has_length, close, named; /* named: Connection names other fields */
    uint64_t length;
    const char *line_rest; /* the status line after the version: " 200 OK" */
    size_t rest_len;
} Resp;

static int parse_response(const char *buf, size_t n, size_t *from, Resp *r) {
    int bad;
    const char *m = head_end(buf, n, from, &bad);
    if (m == NULL) {
        if (bad)
            return HEAD_BAD;
        return n > HEAD_MAX ? HEAD_TOO_LARGE : HEAD_MORE;
    }
    const char *end = m + 4;
    memset(r, 0, sizeof *r);
    r->len = (size_t)(end - buf);
    const char *pos = buf, *ls, *le;
    if (next_line(&pos, end, &ls, &le) != 1)
        return HEAD_BAD;
    size_t ll = (size_t)(le - ls);
    if (ll < 12 || memcmp(ls, "HTTP/1.", 7) != 0 || (ls[7] != '0' && ls[7] != '1') || ls[8] != ' ')
        return HEAD_BAD;
    for (int i = 9; i < 12; i++)
        if (ls[i] < '0' || ls[i] > '9')
            return HEAD_BAD;
    if (ll > 12 && ls[12] != ' ')
        return HEAD_BAD;
    r->http11 = ls[7] == '1';
    r->status = (ls[9] - '0') * 100 + (ls[10] - '0') * 10 + (ls[11] - '0');
    r->line_rest = ls + 8;
    r->rest_len = ll - 8;
    int te = 0;
    for (;;) {
        int k = next_line(&pos, end, &ls, &le);
        if (k < 0)
            return HEAD_BAD;
        if (k == 0)
            break;
        Field f;
        if (parse_field(ls, le, &f) < 0)
            return HEAD_BAD;
        const char *name = f.name;
        size_t name_len = f.name_len;
        if (IS(name, "content-length")) {
            uint64_t v;
            if (parse_length(f.value, f.value_len, &v) < 0 || (r->has_length && v != r->length))
                return HEAD_BAD;
            r->length = v;
            r->has_length = 1;
        } else if (IS(name, "transfer-encoding")) {
            te = 1;
            /* chunked only when it is the last coding (RFC 9112 §6.3): else the body ends with the connection */
            const char *v = f.value;
            size_t v_len = f.value_len;
            r->chunked = v_len >= 7 && strncasecmp(v + v_len - 7, "chunked", 7) == 0 &&
                         (v_len == 7 || v[v_len - 8] == ' ' || v[v_len - 8] == ',');
        } else if (IS(name, "connection")) {
            int t = connection_tokens(f.value, f.value_len);
            if (t & 1)
                r->close = 1;
            if (t & 8)
                r->named = 1;
        }
    }
    if (te)
        r->has_length = 0; /* Transfer-Encoding wins; Content-Length beside it is not forwarded */
    return HEAD_OK;
}

/* Is ``name`` one of the tokens of the response's Connection fields (only looked at when some are not
 * close/keep-alive)? */
static int named_by_connection(const char *head, size_t head_len, const char *name, size_t name_len) {
    const char *pos = head, *end = head + head_len, *ls, *le;
    next_line(&pos, end, &ls, &le);
    while (next_line(&pos, end, &ls, &le) == 1) {
        Field f;
        if (parse_field(ls, le, &f) < 0)
            continue;
        const char *n = f.name;
        size_t n_len = f.name_len;
        if (!IS(n, "connection"))
            continue;
        const char *v = f.value;
        size_t i = 0, vn = f.value_len;
        while (i < vn) {
            while (i < vn && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                i++;
            size_t st = i;
            while (i < vn && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
                i++;
            if (i - st == name_len && strncasecmp(v + st, name, name_len) == 0)
                return 1;
        }
    }
    return 0;
}

static int render_response(HttpConn *s, Buf *b, const char *head, Resp *r, int mode, int keep) {
    PUTS(b, "HTTP/1.1");
    PUT(b, r->line_rest, r->rest_len);
    PUTS(b, "\r\n");
    const char *pos = head, *end = head + r->len, *ls, *le;
    next_line(&pos, end, &ls, &le);
    while (next_line(&pos, end, &ls, &le) == 1) {
        Field f;
        if (parse_field(ls, le, &f) < 0)
            continue;
        const char *name = f.name;
        size_t name_len = f.name_len;
        if (is_hop(name, name_len))
            continue;
        if (IS(name, "content-length") && mode != B_LENGTH)
            continue;
        if (r->named && named_by_connection(head, r->len, name, name_len))
            continue;
        if (in_drop(s->resp_drop, name, name_len))
            continue;
        PUT(b, ls, (size_t)(le - ls));
        PUTS(b, "\r\n");
    }
    if (s->resp_extra != NULL)
        PUT(b, PyBytes_AS_STRING(s->resp_extra), (size_t)PyBytes_GET_SIZE(s->resp_extra));
    PUT(b, PyBytes_AS_STRING(s->extra_resp), (size_t)PyBytes_GET_SIZE(s->extra_resp));
    if (mode == B_CHUNKED || mode == B_CLOSE)
        PUTS(b, "transfer-encoding: chunked\r\n");
    if (!keep)
        PUTS(b, "connection: close\r\n");
    PUTS(b, "\r\n");
    return 0;
}

static Buf scratch; /* one render at a time (the GIL is held) */

/* ------------------------------------------------------------------------------------------ the exchange */

static void call_finish(HttpConn *s) {
    PyObject *tok = s->token, *cl = s->fin_client;
    s->token = NULL;
    s->fin_client = NULL;
    Py_CLEAR(s->resp_extra);
    Py_CLEAR(s->resp_drop);
    if (tok == NULL) {
        if (cl != NULL) {
            h_close((HttpConn *)cl); /* nobody to give it back to the pool */
            Py_DECREF(cl);
        }
        return;
    }
    PyObject *res = PyObject_CallMethodObjArgs(tok, str_finish, cl != NULL ? cl : Py_None, NULL);
    if (res == NULL)
        PyErr_WriteUnraisable(tok);
    Py_XDECREF(res);
    Py_DECREF(tok);
    Py_XDECREF(cl);
}

/* The response went (whole) to the client: Python accounts for it; the downstream connection goes on with its
 * next request (``keep``) or closes. ``reuse``: the upstream connection, for the pool. */
static void ex_complete(HttpConn *s, HttpConn *reuse, int keep) {
    s->x = X_IDLE;
    s->deadline = 0;
    s->idle_since = mono_now();
    s->up_len = 0;
    s->head_len = 0;
    if (s->hpause & P_BUFFER)
        h_resume(s, P_BUFFER);
    if (s->hpause & P_PIPELINE)
        h_resume(s, P_PIPELINE); /* the next request is read from the buffer first */
    Py_XINCREF(reuse);
    Py_XSETREF(s->fin_client, (PyObject *)reuse);
    if (s->in_cb)
        s->finish_pending = 1; /* the decision answered locally: accounted once Python has the token */
    else
        call_finish(s);
    if (!keep)
        h_close(s);
    else
        h_kick(s); /* a pipelined request may be waiting in the buffer; the rest of an answered body is dropped */
}

static void req_complete(HttpConn *s) {
    if ((s->x == X_WAIT || s->x == X_ATTACHED) && s->timeout > 0)
        s->deadline = mono_now() + s->timeout;
}

static void srv_lost(HttpConn *s) {
    if (s->x == X_IDLE)
        return;
    HttpConn *c = s->peer;
    if (c != NULL) {
        Py_INCREF(c);
        unlink_pair(s);
        h_abort(c); /* mid-exchange: it cannot be reused */
        Py_DECREF(c);
    }
    s->x = X_IDLE;
    s->deadline = 0;
    if (s->in_cb)
        s->finish_pending = 1;
    else
        call_finish(s);
}

static void cli_lost(HttpConn *c) {
    HttpConn *s = c->peer;
    if (s == NULL)
        return;
    Py_INCREF(s);
    unlink_pair(s);
    if (s->x == X_ATTACHED) {
        /* before the response head: Python retries (the replay buffer) or answers 503 */
        s->x = X_WAIT;
        if (s->token == NULL && s->in_cb) {
            s->lost_pending = 1; /* told once Python has the exchange: on_request is still deciding */
        } else if (s->token != NULL) {
            PyObject *res = PyObject_CallMethodObjArgs(s->token, str_upstream_lost, NULL);
            if (res == NULL)
                PyErr_WriteUnraisable(s->token);
            Py_XDECREF(res);
        } else {
            static const char why[] = "upstream connection reset before the response headers";
            local_response(s, 503, why, sizeof why - 1, "", 0);
        }
    } else if (s->x == X_RESPONDING) {
        h_abort(s); /* mid-body: the client must not take a truncated answer as whole */
    }
    Py_DECREF(s);
}

static void ex_body(HttpConn *s, const char *p, size_t n) {
    s->rx += n;
    switch (s->x) {
    case X_WAIT:
        if (s->ever_sent && !s->replay)
            return; /* cannot be sent again: the exchange fails rather than retries */
        if (buf_add(&s->up, &s->up_len, &s->up_cap, p, n) < 0) {
            h_abort(s);
            return;
        }
        if (s->up_len - s->head_len > BODY_BUFFER_LIMIT)
            h_pause(s, P_BUFFER);
        return;
    case X_ATTACHED:
    case X_RESPONDING:
        if (s->peer != NULL)
            h_emit(s->peer, p, n);
        if (s->replay) {
            if (s->up_len + n > REPLAY_LIMIT) {
                s->replay = 0; /* too large to replay: this attempt is the last */
                s->up_len = 0;
            } else if (buf_add(&s->up, &s->up_len, &s->up_cap, p, n) < 0) {
                h_abort(s);
            }
        }
        return;
    default:
        return; /* answered already: the rest of the body is read and dropped */
    }
}

static const char *reason_phrase(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* An answer made here (gateway/http/headers.py simple_response): the request never reached, or never left,
 * the upstream. */
static void local_response(HttpConn *s, int status, const char *reason, size_t reason_len, const char *extra,
                           size_t extra_len) {
    if (s->closed || s->x == X_IDLE)
        return;
    if (s->x == X_RESPONDING) {
        h_abort(s); /* a head went already */
        return;
    }
    HttpConn *c = s->peer;
    if (c != NULL) {
        Py_INCREF(c);
        unlink_pair(s);
        h_abort(c); /* mid-exchange (a timeout, a malformed answer): that connection is done */
        Py_DECREF(c);
    }
    s->status = status;
    s->deadline = 0;
    int keep = s->keep_alive && s->req_done && !s->draining;
    char top[256];
    int n = snprintf(top, sizeof top,
                     "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n%s", status,
                     reason_phrase(status), reason_len + 1, keep ? "" : "connection: close\r\n");
    scratch.len = 0;
    if (buf_add(&scratch.data, &scratch.len, &scratch.cap, top, (size_t)n) < 0 ||
        buf_add(&scratch.data, &scratch.len, &scratch.cap, extra, extra_len) < 0 ||
        buf_add(&scratch.data, &scratch.len, &scratch.cap, PyBytes_AS_STRING(s->extra_resp),
                (size_t)PyBytes_GET_SIZE(s->extra_resp)) < 0 ||
        buf_add(&scratch.data, &scratch.len, &scratch.cap, "\r\n", 2) < 0 ||
        buf_add(&scratch.data, &scratch.len, &scratch.cap, reason, reason_len) < 0 ||
        buf_add(&scratch.data, &scratch.len, &scratch.cap, "\n", 1) < 0) {
        h_abort(s);
        return;
    }
    h_write(s, scratch.data, scratch.len);
    ex_complete(s, NULL, keep);
}

/* Hand the connection to the Python proxy (a request this engine does not serve): a socketpair, whose one end
 * Python serves, becomes the other end of an L4 relay with the client. */
static void fall_back(HttpConn *s) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        h_abort(s);
        return;
    }
    PyObject *fd = PyLong_FromLong(sv[0]);
    PyObject *on_close = fd != NULL ? PyObject_CallFunctionObjArgs(s->on_fallback, (PyObject *)s, fd, NULL) : NULL;
    Py_XDECREF(fd);
    if (on_close != NULL && s->gone) {
        Py_CLEAR(on_close); /* closed meanwhile: nothing to hand over */
        close(sv[1]);
        return;
    }
    if (on_close == NULL) {
        PyErr_WriteUnraisable(s->on_fallback);
        close(sv[1]); /* Python closes or owns sv[0] */
        h_abort(s);
        return;
    }
    PyObject *relay = relay_adopt(s->core, &s->s, s->sslref, sv[1], on_close, s->in + s->in_off, s->in_len);
    Py_DECREF(on_close);
    if (relay == NULL) {
        PyErr_WriteUnraisable((PyObject *)s);
        close(sv[1]);
        h_abort(s);
        return;
    }
    /* The socket, its TLS state and its queue are the relay's now. */
    memset(&s->s, 0, sizeof s->s);
    s->s.fd = -1;
    s->s.kind = K_HTTP;
    s->s.owner = s;
    Py_CLEAR(s->sslref);
    s->fallen = 1;
    s->closed = 1;
    s->gone = 1;
    s->in_len = 0;
    Py_DECREF(relay);
    if (PyList_Append(s->core->dead, (PyObject *)s) < 0) /* the core's reference goes; no on_close */
        PyErr_WriteUnraisable((PyObject *)s);
}

static void start_exchange(HttpConn *s, Req *r) {
    const char *p = s->in + s->in_off;
    s->raw_len = 0;
    if (buf_add(&s->raw, &s->raw_len, &s->raw_cap, p, r->len) < 0) {
        h_abort(s);
        return;
    }
    s->method_len = r->method_len;
    s->url_off = r->url_off;
    s->url_len = r->url_len;
    s->keep_alive = r->keep_alive;
    s->chunked = r->chunked;
    s->is_head = r->method_len == 4 && memcmp(p, "HEAD", 4) == 0;
    if (r->chunked) {
        s->bstate = B_CHUNKED;
        s->cstate = C_SIZE;
        s->req_done = 0;
    } else if (r->has_length && r->length > 0) {
        s->bstate = B_LENGTH;
        s->remaining = r->length;
        s->req_done = 0;
    } else {
        s->bstate = B_DONE;
        s->req_done = 1;
    }
    s->x = X_WAIT;
    s->status = 0;
    s->rx = s->tx = 0;
    s->started = mono_now();
    s->head_time = 0;
    s->deadline = 0;
    s->timeout = 0;
    s->up_len = s->head_len = 0;
    s->replay = s->check_status = s->ever_sent = 0;
    s->reqid_len = s->trace_len = 0;
    s->reqid_ptr = NULL;
    consume(s, r->len);
    PyObject *method = PyBytes_FromStringAndSize(s->raw, (Py_ssize_t)r->method_len);
    PyObject *url = PyBytes_FromStringAndSize(s->raw + r->url_off, (Py_ssize_t)r->url_len);
    PyObject *tok = NULL;
    if (method != NULL && url != NULL) {
        s->in_cb = 1;
        tok = PyObject_CallFunctionObjArgs(s->on_request, (PyObject *)s, method, url, NULL);
        s->in_cb = 0;
    }
    Py_XDECREF(method);
    Py_XDECREF(url);
    if (tok == NULL) {
        PyErr_WriteUnraisable(s->on_request);
        static const char why[] = "internal error";
        local_response(s, 500, why, sizeof why - 1, "", 0);
    } else if (tok == Py_None) {
        Py_DECREF(tok);
    } else {
        Py_XSETREF(s->token, tok);
    }
    if (s->finish_pending) {
        s->finish_pending = 0;
        s->lost_pending = 0;
        call_finish(s);
    } else if (s->lost_pending) {
        s->lost_pending = 0;
        if (s->x == X_WAIT && s->token != NULL) {
            PyObject *res = PyObject_CallMethodObjArgs(s->token, str_upstream_lost, NULL);
            if (res == NULL)
                PyErr_WriteUnraisable(s->token);
            Py_XDECREF(res);
        } else if (s->x == X_WAIT) {
            static const char why[] = "upstream connection reset before the response headers";
            local_response(s, 503, why, sizeof why - 1, "", 0);
        }
    }
    if (s->req_done)
        req_complete(s);
}

static void srv_process(HttpConn *s) {
    if (s->busy)
        return;
    s->busy = 1;
    Py_INCREF(s);
    while (!s->closed) {
        if (!s->req_done) {
            if (!s->in_len)
                break;
            const char *p = s->in + s->in_off;
            size_t used = s->in_len, fwd;
            int done = 0;
            if (s->bstate == B_LENGTH) {
                if ((uint64_t)used > s->remaining)
                    used = (size_t)s->remaining;
                s->remaining -= used;
                done = s->remaining == 0;
                fwd = used;
            } else if (chunk_scan(&s->cstate, &s->remaining, p, s->in_len, &used, &fwd, &done) < 0) {
                s->req_done = 1; /* nothing more is read from this connection */
                s->keep_alive = 0;
                if (s->x == X_WAIT || s->x == X_ATTACHED) { /* no answer started: the upstream attempt goes */
                    static const char why[] = "malformed request";
                    local_response(s, 400, why, sizeof why - 1, "", 0);
                    h_close(s);
                } else {
                    h_abort(s);
                }
                break;
            }
            if (fwd)
                ex_body(s, p, fwd);
            if (done && s->bstate == B_CHUNKED)
                ex_body(s, "\r\n", 2); /* the end of the (dropped) trailer section */
            consume(s, used);
            if (done) {
                s->req_done = 1;
                req_complete(s);
            }
            if (!used && !done)
                break;
            continue;
        }
        if (s->x != X_IDLE)
            break; /* a pipelined request waits for the one before it */
        if (s->draining) {
            h_close(s);
            break;
        }
        if (!s->in_len)
            break;
        Req r;
        int k = parse_request(s->in + s->in_off, s->in_len, &s->hscan, &r);
        if (k == HEAD_MORE)
            break;
        if (k == HEAD_OK) {
            start_exchange(s, &r);
            continue;
        }
        if (k == HEAD_SLOW) {
            fall_back(s);
            break;
        }
        /* Malformed: 400 and close; nothing has reached the upstream for this request. */
        s->x = X_WAIT;
        s->req_done = 1;
        s->keep_alive = 0;
        s->token = NULL;
        s->in_len = 0;
        s->in_cb = 1;
        PyObject *res = PyObject_CallFunction(s->on_request, "OOO", (PyObject *)s, Py_None, Py_None);
        s->in_cb = 0;
        if (res == NULL)
            PyErr_WriteUnraisable(s->on_request);
        Py_XDECREF(res);
        if (k == HEAD_TOO_LARGE) {
            static const char why[] = "request header fields too large";
            local_response(s, 431, why, sizeof why - 1, "", 0);
        } else {
            static const char why[] = "malformed request";
            local_response(s, 400, why, sizeof why - 1, "", 0);
        }
        h_close(s);
        break;
    }
    if (!s->closed) {
        if (s->x != X_IDLE && s->req_done && s->in_len > HEAD_MAX)
            h_pause(s, P_PIPELINE);
        else if (s->hpause & P_PIPELINE)
            h_resume(s, P_PIPELINE);
    }
    s->busy = 0;
    Py_DECREF(s);
}

static void resp_done(HttpConn *c, HttpConn *s) {
    int reuse = c->reusable && s->req_done && c->in_len == 0 && !c->closed && !c->s.rd_eof;
    c->rstate = R_IDLE;
    Py_INCREF(c);
    Py_INCREF(s);
    unlink_pair(s);
    if (!reuse)
        h_close(c);
    else
        c->idle_since = mono_now();
    ex_complete(s, reuse ? c : NULL, s->keep_alive && !s->draining);
    Py_DECREF(s);
    Py_DECREF(c);
}

static void bad_response(HttpConn *c, HttpConn *s) {
    Py_INCREF(s);
    unlink_pair(s);
    h_abort(c);
    if (s->x == X_ATTACHED) {
        s->x = X_WAIT;
        static const char why[] = "upstream sent a malformed response";
        local_response(s, 502, why, sizeof why - 1, "", 0);
    } else {
        h_abort(s);
    }
    Py_DECREF(s);
}

static void cli_process(HttpConn *c) {
    if (c->busy)
        return;
    c->busy = 1;
    Py_INCREF(c);
    HttpConn *s = c->peer;
    if (s != NULL) {
        Py_INCREF(s);
        s->gathering++;
    }
    while (!c->closed && c->in_len) {
        if (s == NULL || c->peer != s) {
            h_abort(c); /* bytes from a connection no request is waiting on */
            break;
        }
        const char *p = c->in + c->in_off;
        if (c->rstate == R_HEAD) {
            Resp r;
            int k = parse_response(p, c->in_len, &c->hscan, &r);
            if (k == HEAD_MORE)
                break;
            if (k < 0) {
                bad_response(c, s);
                break;
            }
            if (r.status >= 100 && r.status < 200) {
                if (r.status == 101) {
                    bad_response(c, s); /* no upgrade was asked for */
                    break;
                }
                h_write(s, p, r.len); /* 100 Continue and friends go to the client as they are */
                consume(c, r.len);
                continue;
            }
            if (s->check_status && s->token != NULL && r.status >= 400) { /* only errors are retried */
                PyObject *st = PyLong_FromLong(r.status);
                PyObject *res = st ? PyObject_CallMethodObjArgs(s->token, str_on_head, st, NULL) : NULL;
                Py_XDECREF(st);
                int retry = res != NULL && PyObject_IsTrue(res) == 1;
                if (res == NULL)
                    PyErr_WriteUnraisable(s->token);
                Py_XDECREF(res);
                if (retry || c->peer != s)
                    break; /* Python dropped this attempt (detach) and tries again */
            }
            int mode;
            if (s->is_head || r.status == 204 || r.status == 304)
                mode = B_DONE;
            else if (r.chunked)
                mode = B_CHUNKED;
            else if (r.has_length)
                mode = r.length ? B_LENGTH : B_DONE;
            else
                mode = B_CLOSE;
            c->reusable = r.http11 && !r.close && mode != B_CLOSE;
            s->status = r.status;
            s->head_time = mono_now();
            s->deadline = 0;
            s->x = X_RESPONDING;
            scratch.len = 0;
            if (render_response(s, &scratch, p, &r, mode == B_DONE && r.has_length ? B_LENGTH : mode,
                                s->keep_alive && !s->draining) < 0) {
                bad_response(c, s);
                break;
            }
            h_write(s, scratch.data, scratch.len);
            consume(c, r.len);
            c->bstate = mode;
            c->remaining = r.length;
            c->cstate = C_SIZE;
            if (mode == B_DONE) {
                resp_done(c, s);
                break;
            }
            c->rstate = R_BODY;
            continue;
        }
        size_t used = c->in_len, fwd;
        int done = 0;
        if (c->bstate == B_LENGTH) {
            if ((uint64_t)used > c->remaining)
                used = (size_t)c->remaining;
            c->remaining -= used;
            done = c->remaining == 0;
            h_write(s, p, used);
        } else if (c->bstate == B_CHUNKED) {
            if (chunk_scan(&c->cstate, &c->remaining, p, c->in_len, &used, &fwd, &done) < 0) {
                bad_response(c, s);
                break;
            }
            h_write(s, p, fwd);
            if (done)
                h_write(s, "\r\n", 2); /* the end of the (dropped) trailer section */
        } else {
            char line[24];
            int n = snprintf(line, sizeof line, "%zx\r\n", used);
            h_write(s, line, (size_t)n);
            h_write(s, p, used);
            h_write(s, "\r\n", 2);
        }
        s->tx += used;
        consume(c, used);
        if (done) {
            resp_done(c, s);
            break;
        }
        if (!used)
            break;
    }
    if (c->s.rd_eof && !c->closed) {
        /* Over TLS, only a close_notify ends it: a bare FIN may be a truncation (RFC 8446 §6.1). */
        if (s != NULL && c->peer == s && c->rstate == R_BODY && c->bstate == B_CLOSE && c->clean_eof) {
            h_write(s, "0\r\n\r\n", 5); /* a close-delimited answer ends with the connection */
            c->reusable = 0;
            resp_done(c, s);
        }
        h_close(c); /* attached before a whole answer: the exchange sees a reset */
    }
    if (s != NULL) {
        h_gather_end(s);
        Py_DECREF(s);
    }
    c->busy = 0;
    Py_DECREF(c);
}

/* ------------------------------------------------------------------------------------------ reading */

static void h_read(HttpConn *c, int force) {
    End *x = &c->s;
    if (c->closed)
        return;
    Py_INCREF(c);
    size_t total = 0;
    int err = 0;
    while ((!c->hpause || force) && !x->rd_eof && total < READ_BUDGET) {
        if (c->in_off && c->in_off + c->in_len + READ_SPACE > c->in_cap) {
            memmove(c->in, c->in + c->in_off, c->in_len);
            c->in_off = 0;
        }
        if (buf_reserve(&c->in, &c->in_cap, c->in_off + c->in_len + READ_SPACE) < 0) {
            err = 1;
            break;
        }
        char *dst = c->in + c->in_off + c->in_len;
        size_t space = c->in_cap - c->in_off - c->in_len;
        if (x->ssl != NULL) {
            ERR_clear_error();
            int n = SSL_read(x->ssl, dst, (int)(space > INT32_MAX ? INT32_MAX : space));
            if (n > 0) {
                c->in_len += (size_t)n;
                c->rx_total += (unsigned long long)n;
                total += (size_t)n;
                continue;
            }
            int e = SSL_get_error(x->ssl, n);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ)
                break;
            if (e == SSL_ERROR_ZERO_RETURN || (x->sock_eof && !x->sock_err)) {
                x->rd_eof = 1;
                c->clean_eof = e == SSL_ERROR_ZERO_RETURN;
                break;
            }
            err = 1;
            break;
        }
        ssize_t n = read(x->fd, dst, space);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->rx_total += (unsigned long long)n;
            total += (size_t)n;
            if ((size_t)n < space)
                break;
            continue;
        }
        if (n == 0) {
            x->rd_eof = 1;
            c->clean_eof = 1;
            break;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            err = 1;
        break;
    }
    if (err || x->sock_err) {
        h_abort(c);
        Py_DECREF(c);
        return;
    }
    if (c->on_ticket != NULL) {
        SSL_SESSION *sess = SSL_get0_session(x->ssl);
        if (sess != NULL && SSL_SESSION_has_ticket(sess)) {
            PyObject *cb = c->on_ticket;
            c->on_ticket = NULL;
            PyObject *res = PyObject_CallNoArgs(cb);
            if (res == NULL)
                PyErr_WriteUnraisable(cb);
            Py_XDECREF(res);
            Py_DECREF(cb);
        }
    }
    if (c->server) {
        srv_process(c);
        if (x->rd_eof && !c->closed) {
            if (!c->req_done)
                h_abort(c); /* mid-body: the request can never be whole */
            else if (c->x == X_IDLE)
                h_close(c);
            else
                c->draining = 1; /* the client sends no more requests: answer the one in flight, then close */
        }
    } else {
        cli_process(c);
        if (x->rd_eof && !c->closed)
            h_close(c);
    }
    if (!c->closed) {
        h_watch(c);
        /* Records OpenSSL read ahead past the budget have no socket event to announce them (while paused, the
         * resume kicks). SSL_has_pending() would also count a partial record: a busy loop until its rest came. */
        if (x->ssl != NULL && !c->hpause && !x->rd_eof && (total >= READ_BUDGET || SSL_pending(x->ssl) > 0))
            h_kick(c);
    }
    Py_DECREF(c);
}

void http_handle(End *x, uint32_t events) {
    HttpConn *c = (HttpConn *)x->owner;
    if (c->gone)
        return;
    Py_INCREF(c);
    if (events & EPOLLOUT || ((events & (EPOLLERR | EPOLLHUP)) && x->out_len))
        h_flush_out(c);
    if (!c->gone) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            /* level-triggered: read what is left (an EOF or an error), or it comes back forever */
            if (!x->rd_eof && !c->closed)
                h_read(c, 1);
            if (!c->gone && (x->rd_eof || c->closed))
                h_abort(c);
        } else if (events & EPOLLIN) {
            h_read(c, 0);
        }
    }
    Py_DECREF(c);
}

void http_run_kicks(Core *core) {
    for (int round = 0; PyList_GET_SIZE(core->kicks); round++) {
        if (round == 16) {
            /* Others' sockets get a turn: the wake-up descriptor brings the loop back to the rest at once. */
            uint64_t one = 1;
            if (write(core->wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
                PyErr_WriteUnraisable((PyObject *)core);
            return;
        }
        PyObject *batch = core->kicks;
        core->kicks = PyList_New(0);
        if (core->kicks == NULL) {
            core->kicks = batch;
            PyErr_WriteUnraisable((PyObject *)core);
            return;
        }
        Py_ssize_t n = PyList_GET_SIZE(batch);
        for (Py_ssize_t k = 0; k < n; k++) {
            HttpConn *c = (HttpConn *)PyList_GET_ITEM(batch, k);
            c->kicked = 0;
            if (!c->closed)
                h_read(c, 0); /* the socket only if not paused; the buffered input in any case */
        }
        Py_DECREF(batch);
    }
}

/* Python-initiated work done: what it made runnable runs now (in a poll, the poll does it). */
static void settle(Core *core) {
    if (core->in_poll)
        return;
    core->in_poll++;
    http_run_kicks(core);
    core->in_poll--;
    core_reap(core);
}

/* Every method Python calls: work it causes (kicks, reaps) runs once, when the outermost call returns, never
 * under a C caller that is still in the middle of an exchange (a callback inside forward() calling respond()
 * must not start the next pipelined request while forward() still looks at this one). */
#define ENTER(conn)                                                                                           \
    Core *core_ = (conn)->core;                                                                               \
    Py_INCREF(core_);                                                                                         \
    Py_INCREF(conn);                                                                                          \
    core_->in_poll++
#define LEAVE(conn)                                                                                           \
    core_->in_poll--;                                                                                         \
    settle(core_);                                                                                            \
    Py_DECREF(conn);                                                                                          \
    Py_DECREF(core_)

void http_reap(PyObject *obj) {
    HttpConn *c = (HttpConn *)obj;
    if (c->fallen) {
        Py_CLEAR(c->on_close);
    } else if (c->server) {
        PyObject *cb = c->on_close;
        c->on_close = NULL;
        if (cb != NULL) {
            PyObject *res = PyObject_CallOneArg(cb, obj);
            if (res == NULL)
                PyErr_WriteUnraisable(cb);
            Py_XDECREF(res);
            Py_DECREF(cb);
        }
    } else if (c->dict != NULL) {
        PyObject *cb = PyDict_GetItemWithError(c->dict, str_lost_cb);
        if (cb != NULL && cb != Py_None) {
            Py_INCREF(cb);
            PyObject *res = PyObject_CallOneArg(cb, obj);
            if (res == NULL)
                PyErr_WriteUnraisable(cb);
            Py_XDECREF(res);
            Py_DECREF(cb);
        }
        PyErr_Clear();
    }
    Py_CLEAR(c->on_request);
    Py_CLEAR(c->on_fallback);
    Py_CLEAR(c->on_ticket);
    Py_DECREF(obj); /* the core's reference, taken when the socket was adopted */
}

/* ------------------------------------------------------------------------------------------ Python API */

static HttpConn *conn_new(Core *core, int fd, PyObject *sslobj, PyObject *ctx, int server) {
    HttpConn *c = PyObject_GC_New(HttpConn, &HttpConnType);
    if (c == NULL)
        return NULL;
    memset((char *)c + sizeof(PyObject), 0, sizeof(HttpConn) - sizeof(PyObject));
    Py_INCREF(core);
    c->core = core;
    c->server = server;
    c->s.kind = K_HTTP;
    c->s.owner = c;
    c->s.fd = -1;
    c->idle_since = mono_now();
    PyObject_GC_Track(c);
    if (sslobj != Py_None) {
        SSL *ssl = ssl_of(sslobj, ctx);
        if (ssl == NULL)
            goto fail;
        if (!SSL_is_init_finished(ssl)) {
            PyErr_SetString(PyExc_ValueError, "the TLS handshake is not finished");
            goto fail;
        }
        c->s.ssl = ssl;
        Py_INCREF(sslobj);
        c->sslref = sslobj;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        PyErr_SetFromErrno(PyExc_OSError); /* every call here must return at once: the loop's thread runs it */
        goto fail;
    }
    struct epoll_event ev;
    ev.events = EPOLLIN;
    ev.data.ptr = &c->s;
    if (epoll_ctl(core->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    c->s.fd = fd;
    c->s.events = EPOLLIN;
    if (c->s.ssl != NULL && end_take_over(&c->s) < 0) {
        epoll_ctl(core->epfd, EPOLL_CTL_DEL, fd, NULL);
        c->s.fd = -1;
        goto fail;
    }
    Py_INCREF(c); /* the core's, while the socket is open */
    h_watch(c);
    return c;
fail:
    c->s.ssl = NULL;
    Py_DECREF(c);
    return NULL;
}

PyObject *Core_http(Core *core, PyObject *args) {
    int fd;
    PyObject *sslobj, *ctx, *on_request, *on_fallback, *on_close, *peer_ip, *extra;
    const char *early = NULL;
    Py_ssize_t early_len = 0;
    if (!PyArg_ParseTuple(args, "iOOOOOUS|y#", &fd, &sslobj, &ctx, &on_request, &on_fallback, &on_close, &peer_ip,
                          &extra, &early, &early_len))
        return NULL;
    Py_ssize_t ip_len;
    const char *ip = PyUnicode_AsUTF8AndSize(peer_ip, &ip_len);
    if (ip == NULL)
        return NULL;
    HttpConn *c = conn_new(core, fd, sslobj, ctx, 1);
    if (c == NULL)
        return NULL;
    if ((size_t)ip_len < sizeof c->ip)
        memcpy(c->ip, ip, (size_t)ip_len + 1);
    Py_INCREF(on_request);
    c->on_request = on_request;
    Py_INCREF(on_fallback);
    c->on_fallback = on_fallback;
    Py_INCREF(on_close);
    c->on_close = on_close;
    Py_INCREF(peer_ip);
    c->peer_ip = peer_ip;
    Py_INCREF(extra);
    c->extra_resp = extra;
    c->req_done = 1;
    c->x = X_IDLE;
    if (early_len && buf_add(&c->in, &c->in_len, &c->in_cap, early, (size_t)early_len) < 0) {
        Py_CLEAR(c->on_close); /* never tracked: nobody to tell */
        h_abort(c);
        Py_DECREF(c);
        settle(core);
        return PyErr_NoMemory();
    }
    h_kick(c); /* what came with the handshake (or before the hand-over) is read at start() */
    return (PyObject *)c;
}

PyObject *Core_upstream(Core *core, PyObject *args) {
    int fd;
    PyObject *sslobj, *ctx, *on_ticket = Py_None;
    if (!PyArg_ParseTuple(args, "iOO|O", &fd, &sslobj, &ctx, &on_ticket))
        return NULL;
    HttpConn *c = conn_new(core, fd, sslobj, ctx, 0);
    if (c == NULL)
        return NULL;
    if (on_ticket != Py_None && c->s.ssl != NULL)
        c->on_ticket = Py_NewRef(on_ticket);
    c->rstate = R_IDLE;
    h_kick(c);
    return (PyObject *)c;
}

static int need_server(HttpConn *s) {
    if (!s->server) {
        PyErr_SetString(PyExc_TypeError, "not a downstream connection");
        return -1;
    }
    return 0;
}

static PyObject *HttpConn_prepare(HttpConn *s, PyObject *args) {
    PyObject *url, *extra, *drop, *resp_extra, *resp_drop;
    int replay, check_status;
    if (!PyArg_ParseTuple(args, "OSOSOpp", &url, &extra, &drop, &resp_extra, &resp_drop, &replay, &check_status))
        return NULL;
    if (need_server(s) < 0)
        return NULL;
    if (s->x != X_WAIT || s->ever_sent || s->head_len) {
        PyErr_SetString(PyExc_RuntimeError, "no request waiting to be prepared");
        return NULL;
    }
    const char *u = s->raw + s->url_off;
    size_t u_len = s->url_len;
    if (url != Py_None) {
        if (!PyBytes_Check(url)) {
            PyErr_SetString(PyExc_TypeError, "url: bytes or None");
            return NULL;
        }
        u = PyBytes_AS_STRING(url);
        u_len = (size_t)PyBytes_GET_SIZE(url);
    }
    Buf b = {NULL, 0, 0};
    if (render_request(s, &b, u, u_len, PyBytes_AS_STRING(extra), (size_t)PyBytes_GET_SIZE(extra), drop) < 0 ||
        buf_add(&b.data, &b.len, &b.cap, s->up, s->up_len - s->head_len) < 0) {
        free(b.data);
        return PyErr_NoMemory();
    }
    /* the new head, then the body that arrived before it (if any) */
    free(s->up);
    s->up = b.data;
    s->up_cap = b.cap;
    s->head_len = b.len - (s->up_len - s->head_len);
    s->up_len = b.len;
    s->replay = replay;
    s->check_status = check_status;
    Py_XSETREF(s->resp_extra, PyBytes_GET_SIZE(resp_extra) ? Py_NewRef(resp_extra) : NULL);
    Py_XSETREF(s->resp_drop, resp_drop != Py_None && PyObject_IsTrue(resp_drop) ? Py_NewRef(resp_drop) : NULL);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_forward(HttpConn *s, PyObject *arg) {
    if (need_server(s) < 0)
        return NULL;
    if (Py_TYPE(arg) != &HttpConnType || ((HttpConn *)arg)->server) {
        PyErr_SetString(PyExc_TypeError, "forward: an upstream HttpConn");
        return NULL;
    }
    HttpConn *c = (HttpConn *)arg;
    if (s->x != X_WAIT || s->closed || s->head_len == 0) {
        PyErr_SetString(PyExc_RuntimeError, "no prepared request waiting for a connection");
        return NULL;
    }
    if (c->closed || c->peer != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the upstream connection is closed or busy");
        return NULL;
    }
    ENTER(s);
    Py_INCREF(s);
    Py_INCREF(c);
    s->peer = c;
    c->peer = s;
    c->rstate = R_HEAD;
    c->head_req = s->is_head;
    s->x = X_ATTACHED;
    s->ever_sent = 1;
    Py_INCREF(c);
    h_emit(c, s->up, s->up_len);
    if (s->peer == c && !s->replay)
        s->up_len = 0; /* still this attempt (a failed send ended it, and maybe the exchange) */
    if (s->hpause & P_BUFFER)
        h_resume(s, P_BUFFER);
    if (!c->closed && c->in_len)
        h_kick(c);
    Py_DECREF(c);
    LEAVE(s);
    Py_RETURN_NONE;
}

static PyObject *respond(HttpConn *s, int status, const char *reason, Py_ssize_t reason_len, const char *extra,
                         Py_ssize_t extra_len) {
    if (need_server(s) < 0)
        return NULL;
    ENTER(s);
    local_response(s, status, reason, (size_t)reason_len, extra, (size_t)extra_len);
    LEAVE(s);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_respond(HttpConn *s, PyObject *args) {
    int status;
    const char *reason, *extra = "";
    Py_ssize_t reason_len, extra_len = 0;
    if (!PyArg_ParseTuple(args, "is#|y#", &status, &reason, &reason_len, &extra, &extra_len))
        return NULL;
    return respond(s, status, reason, reason_len, extra, extra_len);
}

/* ServerConnection.local_response's signature, for the listeners' shared code. */
static PyObject *HttpConn_local_response(HttpConn *s, PyObject *args) {
    PyObject *ex;
    int status;
    const char *reason, *extra = "";
    Py_ssize_t reason_len, extra_len = 0;
    if (!PyArg_ParseTuple(args, "Ois#|y#", &ex, &status, &reason, &reason_len, &extra, &extra_len))
        return NULL;
    return respond(s, status, reason, reason_len, extra, extra_len);
}

static PyObject *HttpConn_detach(HttpConn *s, PyObject *unused) {
    if (need_server(s) < 0)
        return NULL;
    ENTER(s);
    HttpConn *c = s->peer;
    if (c != NULL && s->x == X_ATTACHED) {
        Py_INCREF(c);
        unlink_pair(s);
        h_abort(c);
        Py_DECREF(c);
        s->x = X_WAIT;
    }
    LEAVE(s);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_can_replay(HttpConn *s, PyObject *unused) {
    return PyBool_FromLong((s->x == X_WAIT || s->x == X_ATTACHED) && (!s->ever_sent || s->replay));
}

static PyObject *HttpConn_arm_timeout(HttpConn *s, PyObject *arg) {
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    s->timeout = t;
    if (s->req_done && (s->x == X_WAIT || s->x == X_ATTACHED) && t > 0)
        s->deadline = mono_now() + t;
    Py_RETURN_NONE;
}

static PyObject *HttpConn_headers(HttpConn *s, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (out == NULL || !s->server || s->raw_len == 0)
        return out;
    const char *pos = s->raw, *end = s->raw + s->raw_len, *ls, *le;
    next_line(&pos, end, &ls, &le);
    while (next_line(&pos, end, &ls, &le) == 1) {
        Field f;
        if (parse_field(ls, le, &f) < 0)
            continue;
        PyObject *t = Py_BuildValue("(y#y#)", f.name, (Py_ssize_t)f.name_len, f.value, (Py_ssize_t)f.value_len);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    return out;
}

static PyObject *HttpConn_info(HttpConn *s, PyObject *unused) {
    return Py_BuildValue("(y#y#)", s->reqid_ptr ? s->reqid_ptr : "", (Py_ssize_t)(s->reqid_ptr ? s->reqid_len : 0),
                         s->trace, (Py_ssize_t)s->trace_len);
}

/* Once Python tracks the connection (its on_close or lost_cb can be heard): what is waiting runs. */
static PyObject *HttpConn_start(HttpConn *c, PyObject *unused) {
    ENTER(c);
    LEAVE(c);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_close(HttpConn *c, PyObject *unused) {
    ENTER(c);
    if (!c->fallen)
        h_close(c);
    LEAVE(c);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_abort(HttpConn *c, PyObject *unused) {
    ENTER(c);
    if (!c->fallen)
        h_abort(c);
    LEAVE(c);
    Py_RETURN_NONE;
}

static int conn_idle(HttpConn *c) { return !c->fallen && c->x == X_IDLE && c->req_done && c->in_len == 0; }

static PyObject *HttpConn_drain(HttpConn *c, PyObject *unused) {
    ENTER(c);
    c->draining = 1;
    if (c->server && conn_idle(c))
        h_close(c);
    LEAVE(c);
    Py_RETURN_NONE;
}

static PyObject *HttpConn_idle(HttpConn *c, PyObject *unused) { return PyBool_FromLong(c->server && conn_idle(c)); }

static PyObject *HttpConn_queued(HttpConn *c, PyObject *unused) {
    return PyLong_FromSize_t(c->s.out_len + c->w_len);
}

static PyObject *HttpConn_counts(HttpConn *c, PyObject *unused) { return Py_BuildValue("(Ki)", c->rx_total, 0); }

static PyObject *HttpConn_stats(HttpConn *s, PyObject *unused) {
    /* (status, request bytes, response body bytes, started, response head time): the finished exchange */
    return Py_BuildValue("(iKKdd)", s->status, s->rx, s->tx, s->started, s->head_time);
}

static PyObject *get_closed(HttpConn *c, void *cl) { return PyBool_FromLong(c->closed); }
static PyObject *get_peer_ip(HttpConn *c, void *cl) { return Py_NewRef(c->peer_ip ? c->peer_ip : Py_None); }
static PyObject *get_deadline(HttpConn *c, void *cl) { return PyFloat_FromDouble(c->deadline); }
static PyObject *get_draining(HttpConn *c, void *cl) { return PyBool_FromLong(c->draining); }
static PyObject *get_fallen(HttpConn *c, void *cl) { return PyBool_FromLong(c->fallen); }
static PyObject *get_token(HttpConn *c, void *cl) { return Py_NewRef(c->token ? c->token : Py_None); }
static PyObject *get_idle_since(HttpConn *c, void *cl) { return PyFloat_FromDouble(c->idle_since); }
static int set_idle_since(HttpConn *c, PyObject *v, void *cl) {
    double d = v ? PyFloat_AsDouble(v) : 0;
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    c->idle_since = d;
    return 0;
}

static PyGetSetDef HttpConn_getset[] = {
    {"closed", (getter)get_closed, NULL, "closing or closed", NULL},
    {"peer_ip", (getter)get_peer_ip, NULL, "the client's address (downstream connections)", NULL},
    {"deadline", (getter)get_deadline, NULL, "the request timeout's deadline (monotonic), 0: none", NULL},
    {"draining", (getter)get_draining, NULL, NULL, NULL},
    {"fallen_back", (getter)get_fallen, NULL, "handed to the Python proxy", NULL},
    {"token", (getter)get_token, NULL, "the exchange in flight (what on_request returned)", NULL},
    {"idle_since", (getter)get_idle_since, (setter)set_idle_since, NULL, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL}};

static PyMethodDef HttpConn_methods[] = {
    {"prepare", (PyCFunction)HttpConn_prepare, METH_VARARGS,
     "prepare(url|None, extra, drop|None, resp_extra, resp_drop|None, replay, check_status): render the head "
     "for upstream"},
    {"forward", (PyCFunction)HttpConn_forward, METH_O, "forward(upstream): send the request on that connection"},
    {"respond", (PyCFunction)HttpConn_respond, METH_VARARGS, "respond(status, reason, extra=b''): answer here"},
    {"local_response", (PyCFunction)HttpConn_local_response, METH_VARARGS,
     "local_response(ex, status, reason, headers=b'')"},
    {"detach", (PyCFunction)HttpConn_detach, METH_NOARGS, "drop the attempt's upstream connection (a retry)"},
    {"can_replay", (PyCFunction)HttpConn_can_replay, METH_NOARGS, NULL},
    {"arm_timeout", (PyCFunction)HttpConn_arm_timeout, METH_O, "the request timeout in seconds (0: none)"},
    {"headers", (PyCFunction)HttpConn_headers, METH_NOARGS, "the request's fields as [(name, value)]"},
    {"info", (PyCFunction)HttpConn_info, METH_NOARGS, "(x-request-id, traceparent) as sent upstream"},
    {"stats", (PyCFunction)HttpConn_stats, METH_NOARGS, NULL},
    {"start", (PyCFunction)HttpConn_start, METH_NOARGS, "begin: once the caller tracks the connection"},
    {"close", (PyCFunction)HttpConn_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)HttpConn_abort, METH_NOARGS, NULL},
    {"drain", (PyCFunction)HttpConn_drain, METH_NOARGS, "close when idle (now, or after the answer in flight)"},
    {"idle", (PyCFunction)HttpConn_idle, METH_NOARGS, NULL},
    {"queued", (PyCFunction)HttpConn_queued, METH_NOARGS, "bytes accepted for the socket, not sent yet"},
    {"counts", (PyCFunction)HttpConn_counts, METH_NOARGS, "(plaintext bytes received, 0)"},
    {NULL}};

static int HttpConn_traverse(HttpConn *c, visitproc visit, void *arg) {
    Py_VISIT(c->dict);
    Py_VISIT(c->token);
    Py_VISIT(c->on_request);
    Py_VISIT(c->on_fallback);
    Py_VISIT(c->on_close);
    Py_VISIT(c->on_ticket);
    return 0;
}

static int HttpConn_clear(HttpConn *c) {
    Py_CLEAR(c->dict);
    Py_CLEAR(c->token);
    Py_CLEAR(c->on_request);
    Py_CLEAR(c->on_fallback);
    Py_CLEAR(c->on_close);
    Py_CLEAR(c->on_ticket);
    return 0;
}

static void HttpConn_dealloc(HttpConn *c) {
    PyObject_GC_UnTrack(c);
    if (c->s.fd >= 0) {
        epoll_ctl(c->core->epfd, EPOLL_CTL_DEL, c->s.fd, NULL);
        close(c->s.fd);
    }
    if (c->s.bio != NULL)
        BIO_set_data(c->s.bio, NULL);
    free(c->s.out);
    free(c->s.pre);
    free(c->in);
    free(c->w);
    free(c->raw);
    free(c->up);
    HttpConn_clear(c);
    Py_XDECREF(c->sslref);
    Py_XDECREF(c->fin_client);
    Py_XDECREF(c->peer_ip);
    Py_XDECREF(c->extra_resp);
    Py_XDECREF(c->resp_extra);
    Py_XDECREF(c->resp_drop);
    Py_XDECREF(c->core);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

PyTypeObject HttpConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._relaycore.HttpConn",
    .tp_basicsize = sizeof(HttpConn),
    .tp_dealloc = (destructor)HttpConn_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An HTTP/1.1 connection served by the native engine (Core.http, Core.upstream).",
    .tp_traverse = (traverseproc)HttpConn_traverse,
    .tp_clear = (inquiry)HttpConn_clear,
    .tp_methods = HttpConn_methods,
    .tp_getset = HttpConn_getset,
    .tp_dictoffset = offsetof(HttpConn, dict),
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_setattro = PyObject_GenericSetAttr,
};

int http_init(void) {
    str_finish = PyUnicode_InternFromString("finish");
    str_upstream_lost = PyUnicode_InternFromString("upstream_lost");
    str_on_head = PyUnicode_InternFromString("on_head");
    str_lost_cb = PyUnicode_InternFromString("lost_cb");
    if (getrandom(rng, sizeof rng, 0) != sizeof rng || (rng[0] | rng[1]) == 0) {
        rng[0] = (uint64_t)time(NULL) ^ 0x9E3779B97F4A7C15ULL;
        rng[1] = (uint64_t)getpid() * 0xBF58476D1CE4E5B9ULL + 1;
    }
    return str_finish && str_upstream_lost && str_on_head && str_lost_cb ? 0 : -1;
}
