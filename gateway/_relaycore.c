/* The L4 relay's data path in C: read, decrypt, encrypt, write, for connections whose setup (accept, TLS
 * handshake, identity and intention checks, upstream dial) Python has done.
 *
 * Why: once a relay is set up, every record costs the same fixed work: a socket read, an OpenSSL call and a
 * socket write. In Python that work went through the event loop's stream callbacks, a Protocol method, two
 * memory-BIO calls and a bytes object per record; the bench showed that part (interpreter and uvloop, not the
 * syscalls nor the crypto) as what meshgw spent beyond HAProxy per request. Here a relay is two file
 * descriptors and, for a TLS end, the same OpenSSL SSL object Python's ssl module made and handshook (over
 * memory BIOs): the data path keeps using those BIOs, so nothing about the TLS session changes hands but who
 * calls SSL_read and SSL_write.
 *
 * One Core per event loop owns an epoll set; the loop watches its descriptor (loop.add_reader) and calls
 * Core.poll(), which handles every ready socket in one call. Level-triggered; single-threaded (the GIL is
 * held throughout: every call is non-blocking). Semantics follow gateway/l4.py's Python relay: half-close
 * passes through (TLS close_notify one way, TCP FIN the other), a full write buffer pauses the end that
 * fills it, any TLS or socket error aborts both ends, and the relay closes once both directions ended.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* The first fields of CPython's _ssl objects (Modules/_ssl.c: PySSLContext, PySSLSocket; the same from 3.7
 * to 3.13). Only read after checking the object's type name and that its context field is the SSLContext the
 * caller passed, and that the SSL's SSL_CTX is that context's: a layout change fails those checks instead of
 * being dereferenced. */
typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} SSLContextHead;

typedef struct {
    PyObject_HEAD
    PyObject *socket;
    SSL *ssl;
    PyObject *ctx;
} SSLSocketHead;

#define READ_CHUNK (64 * 1024)
/* Bytes waiting for a slow socket past which the end feeding it stops being read (as PENDING_LIMIT in l4.py),
 * and below which it is read again. */
#define HIGH_WATER (256 * 1024)
#define LOW_WATER (64 * 1024)
#define MAX_EVENTS 64

struct Relay;

typedef struct {
    struct Relay *owner;
    int idx;
    int fd;
    SSL *ssl; /* NULL: plaintext end */
    BIO *rbio, *wbio;
    char *out; /* bytes accepted for this socket that it did not take yet */
    size_t out_off, out_len, out_cap;
    uint32_t events; /* what epoll watches now */
    unsigned rd_eof : 1;       /* the peer sent all it will (FIN or close_notify) */
    unsigned wr_eof : 1;       /* we ended our sending (close_notify queued, or FIN) */
    unsigned shut_pending : 1; /* send FIN once ``out`` is flushed */
    unsigned close_pending : 1; /* close once ``out`` is flushed */
    unsigned paused : 1;       /* not read: the other end's ``out`` is full */
    unsigned long long nbytes; /* plaintext bytes received from this end */
} End;

typedef struct Core {
    PyObject_HEAD
    int epfd;
    int in_poll;
    PyObject *dead; /* relays finished during a poll: callbacks run once the batch is done */
} Core;

typedef struct Relay {
    PyObject_HEAD
    Core *core;
    End e[2];
    PyObject *sslrefs[2];
    PyObject *on_close;
    PyObject *on_ticket;
    int ticket_end; /* -1, or the client end whose first session ticket Python wants to keep */
    int finished;
} Relay;

static PyTypeObject CoreType;
static PyTypeObject RelayType;

/* One thread runs a poll at a time (the GIL is held), so these are shared scratch space. */
static char rbuf[READ_CHUNK];
static char pbuf[READ_CHUNK];
static char cbuf[READ_CHUNK + 1024];

static void relay_abort(Relay *r);
static void relay_finish(Relay *r);
static void end_writing(Relay *r, int i);
static void core_reap(Core *c);

/* ------------------------------------------------------------------------------------------ epoll */

static void end_watch(Relay *r, int i) {
    End *x = &r->e[i];
    if (x->fd < 0)
        return;
    uint32_t want = 0;
    if (!x->rd_eof && !x->paused && !x->close_pending)
        want |= EPOLLIN;
    if (x->out_len)
        want |= EPOLLOUT;
    if (want == x->events)
        return;
    struct epoll_event ev;
    ev.events = want;
    ev.data.ptr = x;
    /* An end with nothing to watch stays registered with no events (ERR/HUP still reported): cheaper than
     * removing and adding it again, and its entry goes when the descriptor is closed. */
    epoll_ctl(r->core->epfd, EPOLL_CTL_MOD, x->fd, &ev);
    x->events = want;
}

static void end_close(Relay *r, int i) {
    End *x = &r->e[i];
    if (x->fd < 0)
        return;
    epoll_ctl(r->core->epfd, EPOLL_CTL_DEL, x->fd, NULL);
    close(x->fd);
    x->fd = -1;
    x->events = 0;
    free(x->out);
    x->out = NULL;
    x->out_off = x->out_len = x->out_cap = 0;
    if (r->e[0].fd < 0 && r->e[1].fd < 0)
        relay_finish(r);
}

/* ------------------------------------------------------------------------------------------ writing */

static int out_append(End *x, const char *data, size_t len) {
    if (x->out_off && x->out_off + x->out_len + len > x->out_cap) {
        memmove(x->out, x->out + x->out_off, x->out_len);
        x->out_off = 0;
    }
    if (x->out_off + x->out_len + len > x->out_cap) {
        size_t cap = x->out_cap ? x->out_cap : 16384;
        while (cap < x->out_len + len)
            cap *= 2;
        char *n = realloc(x->out, cap);
        if (n == NULL)
            return -1;
        x->out = n;
        x->out_cap = cap;
    }
    memcpy(x->out + x->out_off + x->out_len, data, len);
    x->out_len += len;
    return 0;
}

/* Bytes for end i's socket: written now if nothing is queued before them, the rest queued. */
static void send_bytes(Relay *r, int i, const char *data, size_t len) {
    End *x = &r->e[i];
    if (x->fd < 0 || len == 0)
        return;
    if (x->out_len == 0) {
        ssize_t n = send(x->fd, data, len, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                relay_abort(r);
                return;
            }
            n = 0;
        }
        data += n;
        len -= (size_t)n;
    }
    if (out_append(x, data, len) < 0) {
        relay_abort(r);
        return;
    }
    end_watch(r, i);
    End *feeder = &r->e[1 - i];
    if (x->out_len > HIGH_WATER && !feeder->paused) {
        feeder->paused = 1;
        end_watch(r, 1 - i);
    }
}

/* What OpenSSL wrote into end i's outgoing memory BIO goes to its socket. */
static void flush_tls(Relay *r, int i) {
    End *x = &r->e[i];
    while (!r->finished && x->fd >= 0 && BIO_ctrl_pending(x->wbio) > 0) {
        int n = BIO_read(x->wbio, cbuf, sizeof cbuf);
        if (n <= 0)
            break;
        send_bytes(r, i, cbuf, (size_t)n);
    }
}

/* Plaintext from the other end, for end i's peer. */
static void deliver(Relay *r, int i, const char *data, size_t len) {
    End *x = &r->e[i];
    if (x->fd < 0 || x->wr_eof || len == 0)
        return;
    if (x->ssl == NULL) {
        send_bytes(r, i, data, len);
        return;
    }
    ERR_clear_error();
    int n = SSL_write(x->ssl, data, (int)len);
    if (n <= 0) {
        ERR_clear_error();
        relay_abort(r);
        return;
    }
    flush_tls(r, i);
}

static void flush_out(Relay *r, int i) {
    End *x = &r->e[i];
    while (x->out_len) {
        ssize_t n = send(x->fd, x->out + x->out_off, x->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            relay_abort(r);
            return;
        }
        x->out_off += (size_t)n;
        x->out_len -= (size_t)n;
    }
    if (x->out_len == 0)
        x->out_off = 0;
    End *feeder = &r->e[1 - i];
    if (feeder->paused && x->out_len < LOW_WATER) {
        feeder->paused = 0;
        end_watch(r, 1 - i);
    }
    if (x->out_len == 0) {
        if (x->close_pending) {
            end_close(r, i);
            return;
        }
        if (x->shut_pending) {
            x->shut_pending = 0;
            shutdown(x->fd, SHUT_WR);
        }
    }
    end_watch(r, i);
}

/* ------------------------------------------------------------------------------------------ ends of streams */

/* End i's peer will get nothing more from us: close_notify on a TLS end (reading goes on: TLS 1.3 half-close),
 * a FIN on a plaintext one once what is queued has gone. */
static void end_writing(Relay *r, int i) {
    End *x = &r->e[i];
    if (x->fd < 0 || x->wr_eof)
        return;
    x->wr_eof = 1;
    if (x->ssl != NULL) {
        ERR_clear_error();
        SSL_shutdown(x->ssl);
        ERR_clear_error();
        flush_tls(r, i);
    } else if (x->out_len) {
        x->shut_pending = 1;
    } else {
        shutdown(x->fd, SHUT_WR);
    }
}

static void relay_close(Relay *r) {
    if (r->finished)
        return;
    for (int i = 0; i < 2; i++) {
        End *x = &r->e[i];
        if (x->fd < 0)
            continue;
        if (x->ssl != NULL && !x->wr_eof)
            end_writing(r, i);
        if (r->finished)
            return;
    }
    for (int i = 0; i < 2; i++) {
        End *x = &r->e[i];
        if (x->fd < 0)
            continue;
        if (x->out_len) {
            x->close_pending = 1; /* closed once flushed, as a transport's close() does */
            end_watch(r, i);
        } else {
            end_close(r, i);
        }
    }
}

static void got_eof(Relay *r, int i) {
    End *x = &r->e[i];
    x->rd_eof = 1;
    end_watch(r, i);
    end_writing(r, 1 - i);
    if (!r->finished && r->e[1 - i].rd_eof)
        relay_close(r);
}

/* ------------------------------------------------------------------------------------------ reading */

static void check_ticket(Relay *r, int i) {
    if (r->ticket_end != i || r->on_ticket == NULL)
        return;
    SSL_SESSION *s = SSL_get0_session(r->e[i].ssl);
    if (s == NULL || !SSL_SESSION_has_ticket(s))
        return;
    r->ticket_end = -1;
    PyObject *res = PyObject_CallNoArgs(r->on_ticket);
    if (res == NULL)
        PyErr_WriteUnraisable(r->on_ticket);
    Py_XDECREF(res);
}

/* Decrypt what end i's incoming BIO holds; the plaintext goes to the other end in batches of up to
 * READ_CHUNK (several records, one write). */
static void decrypt(Relay *r, int i) {
    End *x = &r->e[i];
    size_t have = 0;
    int eof = 0;
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(x->ssl, pbuf + have, (int)(sizeof pbuf - have));
        if (n > 0) {
            have += (size_t)n;
            x->nbytes += (unsigned long long)n;
            if (have == sizeof pbuf) {
                deliver(r, 1 - i, pbuf, have);
                have = 0;
                if (r->finished)
                    return;
            }
            continue;
        }
        int err = SSL_get_error(x->ssl, n);
        ERR_clear_error();
        if (err == SSL_ERROR_WANT_READ)
            break;
        if (err == SSL_ERROR_ZERO_RETURN) {
            eof = 1;
            break;
        }
        relay_abort(r); /* a bad record, a failed MAC, an alert: nothing more can be trusted on this end */
        return;
    }
    if (have)
        deliver(r, 1 - i, pbuf, have);
    if (r->finished)
        return;
    flush_tls(r, i); /* a post-handshake message (key update) may have an answer */
    if (r->finished)
        return;
    check_ticket(r, i);
    if (eof && !r->finished && !x->rd_eof)
        got_eof(r, i);
}

/* ``force``: read even when paused (the socket reported an error or a hang-up: what is left must be read). */
static void read_end(Relay *r, int i, int force) {
    End *x = &r->e[i];
    for (int rounds = 0; rounds < 4; rounds++) {
        if (x->fd < 0 || x->rd_eof || (x->paused && !force) || x->close_pending || r->finished)
            return;
        ssize_t n = read(x->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            if (x->ssl != NULL) {
                if (BIO_write(x->rbio, rbuf, (int)n) != (int)n) {
                    relay_abort(r);
                    return;
                }
                decrypt(r, i);
            } else {
                x->nbytes += (unsigned long long)n;
                deliver(r, 1 - i, rbuf, (size_t)n);
            }
            if ((size_t)n < sizeof rbuf)
                return;
            continue;
        }
        if (n == 0) {
            got_eof(r, i); /* a TCP FIN, with or without close_notify before it */
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        relay_abort(r);
        return;
    }
}

static void handle(Relay *r, int i, uint32_t events) {
    End *x = &r->e[i];
    if (x->fd < 0 || r->finished)
        return;
    if (events & EPOLLOUT || ((events & (EPOLLERR | EPOLLHUP)) && x->out_len))
        flush_out(r, i);
    if (r->finished || x->fd < 0)
        return;
    if (events & (EPOLLERR | EPOLLHUP)) {
        /* Reported whatever we watch (level-triggered: again and again): read what is left, which ends in
         * an EOF or an error; a socket with nothing left to read that still hangs up was reset. */
        if (!x->rd_eof && !x->close_pending)
            read_end(r, i, 1);
        else
            relay_abort(r);
        return;
    }
    if (events & EPOLLIN)
        read_end(r, i, 0);
}

/* ------------------------------------------------------------------------------------------ lifecycle */

static void relay_abort(Relay *r) {
    if (r->finished)
        return;
    for (int i = 0; i < 2; i++) {
        End *x = &r->e[i];
        x->out_len = 0;
        x->close_pending = 0;
    }
    end_close(r, 0);
    end_close(r, 1);
}

static void relay_finish(Relay *r) {
    if (r->finished)
        return;
    r->finished = 1;
    /* Python's callbacks run after the current poll batch: a relay must not be freed while epoll events that
     * point into it may still be handled. */
    if (PyList_Append(r->core->dead, (PyObject *)r) < 0)
        PyErr_WriteUnraisable((PyObject *)r);
    if (!r->core->in_poll)
        core_reap(r->core);
}

static void core_reap(Core *c) {
    while (PyList_GET_SIZE(c->dead)) {
        PyObject *batch = c->dead;
        c->dead = PyList_New(0);
        if (c->dead == NULL) {
            c->dead = batch;
            PyErr_WriteUnraisable((PyObject *)c);
            return;
        }
        Py_ssize_t n = PyList_GET_SIZE(batch);
        for (Py_ssize_t k = 0; k < n; k++) {
            Relay *r = (Relay *)PyList_GET_ITEM(batch, k);
            PyObject *cb = r->on_close;
            r->on_close = NULL;
            Py_CLEAR(r->on_ticket);
            Py_CLEAR(r->sslrefs[0]);
            Py_CLEAR(r->sslrefs[1]);
            for (int i = 0; i < 2; i++)
                r->e[i].ssl = NULL;
            if (cb != NULL) {
                PyObject *res = PyObject_CallOneArg(cb, (PyObject *)r);
                if (res == NULL)
                    PyErr_WriteUnraisable(cb);
                Py_XDECREF(res);
                Py_DECREF(cb);
            }
            Py_DECREF(r); /* the reference the core took in Core.relay; the batch still holds one */
        }
        Py_DECREF(batch);
    }
}

/* ------------------------------------------------------------------------------------------ Python API: Relay */

static void Relay_dealloc(Relay *r) {
    for (int i = 0; i < 2; i++) {
        if (r->e[i].fd >= 0) {
            close(r->e[i].fd);
            r->e[i].fd = -1;
        }
        free(r->e[i].out);
        r->e[i].out = NULL;
    }
    Py_XDECREF(r->sslrefs[0]);
    Py_XDECREF(r->sslrefs[1]);
    Py_XDECREF(r->on_close);
    Py_XDECREF(r->on_ticket);
    Py_XDECREF(r->core);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *Relay_close(Relay *r, PyObject *unused) {
    relay_close(r);
    if (!r->core->in_poll)
        core_reap(r->core);
    Py_RETURN_NONE;
}

static PyObject *Relay_abort(Relay *r, PyObject *unused) {
    relay_abort(r);
    if (!r->core->in_poll)
        core_reap(r->core);
    Py_RETURN_NONE;
}

static PyObject *Relay_counts(Relay *r, PyObject *unused) {
    return Py_BuildValue("(KK)", r->e[0].nbytes, r->e[1].nbytes);
}

static PyObject *Relay_get_finished(Relay *r, void *closure) { return PyBool_FromLong(r->finished); }

static PyMethodDef Relay_methods[] = {
    {"close", (PyCFunction)Relay_close, METH_NOARGS,
     "Graceful close: close_notify on TLS ends, flush what is queued, then close both sockets."},
    {"abort", (PyCFunction)Relay_abort, METH_NOARGS, "Close both sockets now, dropping what is queued."},
    {"counts", (PyCFunction)Relay_counts, METH_NOARGS, "(plaintext bytes from end 0, from end 1)"},
    {NULL}};

static PyGetSetDef Relay_getset[] = {{"finished", (getter)Relay_get_finished, NULL, NULL, NULL}, {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._relaycore.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A relay handed to the native data path (made by Core.relay).",
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

/* ------------------------------------------------------------------------------------------ Python API: Core */

static SSL *ssl_of(PyObject *sslobj, PyObject *context) {
    if (sslobj == Py_None)
        return NULL;
    if (strcmp(Py_TYPE(sslobj)->tp_name, "_ssl._SSLSocket") != 0) {
        PyErr_Format(PyExc_TypeError, "expected an _ssl._SSLSocket, got %s", Py_TYPE(sslobj)->tp_name);
        return NULL;
    }
    SSLSocketHead *h = (SSLSocketHead *)sslobj;
    if (h->ctx != context || h->ssl == NULL || SSL_get_SSL_CTX(h->ssl) != ((SSLContextHead *)context)->ctx) {
        PyErr_SetString(PyExc_TypeError, "the SSL object's layout is not the one this module was built for");
        return NULL;
    }
    return h->ssl;
}

static int end_init(Relay *r, int i, int fd, PyObject *sslobj, PyObject *context) {
    End *x = &r->e[i];
    x->owner = r;
    x->idx = i;
    x->fd = -1;
    if (sslobj != Py_None) {
        SSL *ssl = ssl_of(sslobj, context);
        if (ssl == NULL)
            return -1;
        if (!SSL_is_init_finished(ssl)) {
            PyErr_SetString(PyExc_ValueError, "the TLS handshake is not finished");
            return -1;
        }
        x->ssl = ssl;
        x->rbio = SSL_get_rbio(ssl);
        x->wbio = SSL_get_wbio(ssl);
        if (x->rbio == NULL || x->wbio == NULL) {
            PyErr_SetString(PyExc_ValueError, "the SSL object has no memory BIOs");
            return -1;
        }
        Py_INCREF(sslobj);
        r->sslrefs[i] = sslobj;
    }
    x->fd = fd;
    return 0;
}

static PyObject *Core_relay(Core *c, PyObject *args) {
    int fd0, fd1;
    PyObject *ssl0, *ctx0, *ssl1, *ctx1, *on_close, *on_ticket;
    int ticket_end;
    if (!PyArg_ParseTuple(args, "iOOiOOOOi", &fd0, &ssl0, &ctx0, &fd1, &ssl1, &ctx1, &on_close, &on_ticket,
                          &ticket_end))
        return NULL;
    Relay *r = PyObject_New(Relay, &RelayType);
    if (r == NULL)
        return NULL;
    memset((char *)r + sizeof(PyObject), 0, sizeof(Relay) - sizeof(PyObject));
    r->e[0].fd = r->e[1].fd = -1;
    Py_INCREF(c);
    r->core = c;
    if (end_init(r, 0, fd0, ssl0, ctx0) < 0 || end_init(r, 1, fd1, ssl1, ctx1) < 0) {
        r->e[0].fd = r->e[1].fd = -1; /* the caller still owns the descriptors */
        Py_DECREF(r);
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.ptr = &r->e[i];
        if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, r->e[i].fd, &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            if (i == 1)
                epoll_ctl(c->epfd, EPOLL_CTL_DEL, r->e[0].fd, NULL);
            r->e[0].fd = r->e[1].fd = -1;
            Py_DECREF(r);
            return NULL;
        }
        r->e[i].events = EPOLLIN;
    }
    Py_INCREF(on_close);
    r->on_close = on_close;
    if (on_ticket != Py_None && ticket_end >= 0 && ticket_end < 2 && r->e[ticket_end].ssl != NULL) {
        Py_INCREF(on_ticket);
        r->on_ticket = on_ticket;
        r->ticket_end = ticket_end;
    } else {
        r->ticket_end = -1;
    }
    /* The relay is alive while its sockets are: the core's reference goes with the on_close callback. */
    Py_INCREF(r);
    c->in_poll++;
    /* Records that arrived with the end of the handshake are in the incoming BIO already: no socket event
     * would announce them. */
    for (int i = 0; i < 2; i++)
        if (r->e[i].ssl != NULL && !r->finished)
            decrypt(r, i);
    c->in_poll--;
    core_reap(c);
    return (PyObject *)r;
}

static PyObject *Core_poll(Core *c, PyObject *unused) {
    struct epoll_event evs[MAX_EVENTS];
    c->in_poll++;
    for (int round = 0; round < 8; round++) {
        int n = epoll_wait(c->epfd, evs, MAX_EVENTS, 0);
        if (n <= 0)
            break;
        for (int k = 0; k < n; k++) {
            End *x = (End *)evs[k].data.ptr;
            handle(x->owner, x->idx, evs[k].events);
        }
        if (n < MAX_EVENTS)
            break;
    }
    c->in_poll--;
    core_reap(c);
    Py_RETURN_NONE;
}

static PyObject *Core_fileno(Core *c, PyObject *unused) { return PyLong_FromLong(c->epfd); }

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (!PyArg_ParseTuple(args, ""))
        return NULL;
    Core *c = (Core *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    c->dead = PyList_New(0);
    if (c->dead == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void Core_dealloc(Core *c) {
    if (c->epfd >= 0)
        close(c->epfd);
    Py_XDECREF(c->dead);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef Core_methods[] = {
    {"relay", (PyCFunction)Core_relay, METH_VARARGS,
     "relay(fd0, ssl0, ctx0, fd1, ssl1, ctx1, on_close, on_ticket, ticket_end) -> Relay. Takes ownership of "
     "both descriptors; ssl is an _ssl._SSLSocket over memory BIOs with its handshake done, or None."},
    {"poll", (PyCFunction)Core_poll, METH_NOARGS, "Handle every ready socket (call when fileno() is readable)."},
    {"fileno", (PyCFunction)Core_fileno, METH_NOARGS, "The epoll descriptor for the event loop to watch."},
    {NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway._relaycore.Core",
    .tp_basicsize = sizeof(Core),
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native relays of one event loop, behind one epoll descriptor.",
    .tp_methods = Core_methods,
    .tp_new = Core_new,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gateway._relaycore",
                                    "Native data path for established L4 relays.", -1, NULL};

PyMODINIT_FUNC PyInit__relaycore(void) {
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CoreType);
    PyModule_AddObject(m, "Core", (PyObject *)&CoreType);
    Py_INCREF(&RelayType);
    PyModule_AddObject(m, "Relay", (PyObject *)&RelayType);
    /* The OpenSSL this module was built against; Python's ssl must use the same library (checked on import
     * by gateway/native.py). */
    PyModule_AddIntConstant(m, "OPENSSL_VERSION_NUMBER", (long)OpenSSL_version_num());
    return m;
}
