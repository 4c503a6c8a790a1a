/* The L4 relay's data path in C: read, decrypt, encrypt, write, for connections whose setup (accept, TLS
 * handshake, identity and intention checks, upstream dial) Python has done.
 *
 * Why: once a relay is set up, every record costs the same fixed work: a socket read, an OpenSSL call and a
 * socket write. In Python that work went through the event loop's stream callbacks, a Protocol method, two
 * memory-BIO calls and a bytes object per record; the bench showed that part (interpreter and uvloop, not the
 * syscalls nor the crypto) as what meshgw spent beyond HAProxy per request. Here a relay is two file
 * descriptors and, for a TLS end, the same OpenSSL SSL object Python's ssl module made and handshook over
 * memory BIOs. On hand-over that SSL object's BIOs are replaced by one of ours that reads from and writes to
 * the socket itself (bytes still waiting in Python's incoming BIO are read first): memory BIOs cost two
 * extra copies of every byte per side, which was most of the difference with Envoy in bulk transfers.
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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "_core.h"

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
BIO_METHOD *fd_method;

static void relay_abort(Relay *r);
static void decrypt(Relay *r, int i, int force);
static void flush_out(Relay *r, int i);
static void relay_finish(Relay *r);
static void end_writing(Relay *r, int i);

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
    free(x->pre);
    x->pre = NULL;
    x->pre_off = x->pre_len = 0;
    if (r->e[0].fd < 0 && r->e[1].fd < 0)
        relay_finish(r);
}

/* ------------------------------------------------------------------------------------------ writing */

int out_append(End *x, const char *data, size_t len) {
    if (x->out_off + x->out_len + len > x->out_cap && x->out_off >= x->out_len) {
        /* Compact only when what moves is no more than what was sent since: each byte is moved at most once
         * per byte sent, however the socket takes the queue in pieces. */
        memmove(x->out, x->out + x->out_off, x->out_len);
        x->out_off = 0;
    }
    if (x->out_off + x->out_len + len > x->out_cap) {
        size_t cap = x->out_cap ? x->out_cap : 16384;
        while (cap < x->out_off + x->out_len + len)
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

/* Bytes for end i's socket: written now if nothing is queued before them, the rest queued (and the end that
 * feeds this one paused past HIGH_WATER). -1 (errno kept) on a socket error: the caller aborts. */
/* The part every socket shares (relay ends, HTTP connections): send now what the socket takes if nothing is
 * queued, queue the rest. 1: something is queued now (the caller watches for writability), 0: all sent, -1
 * (errno kept): a socket error. */
int end_send(End *x, const char *data, size_t len) {
    if (x->fd < 0) {
        errno = EPIPE;
        return -1;
    }
    if (len == 0)
        return 0;
    if (x->out_len == 0) {
        ssize_t n = send(x->fd, data, len, MSG_NOSIGNAL);
        if (n == (ssize_t)len)
            return 0;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -1;
            n = 0;
        }
        data += n;
        len -= (size_t)n;
    }
    if (out_append(x, data, len) < 0) {
        errno = ENOMEM;
        return -1;
    }
    return 1;
}

static int send_raw(Relay *r, int i, const char *data, size_t len) {
    End *x = &r->e[i];
    int k = end_send(x, data, len);
    if (k <= 0)
        return k;
    end_watch(r, i);
    End *feeder = &r->e[1 - i];
    if (x->out_len > HIGH_WATER && !feeder->paused) {
        feeder->paused = 1;
        end_watch(r, 1 - i);
    }
    return 0;
}

static void send_bytes(Relay *r, int i, const char *data, size_t len) {
    if (send_raw(r, i, data, len) < 0)
        relay_abort(r);
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
    /* A bulk chunk is several records: OpenSSL hands them to fd_write one by one, from one reused buffer.
     * Gathering them (a copy, cheaper than a syscall) sends them with one send(), as the loopback and NIC
     * paths handle one large segment for less than four small ones. */
    int cork = len > 16384 && x->out_len == 0;
    x->cork = cork;
    ERR_clear_error();
    int n = SSL_write(x->ssl, data, (int)len);
    x->cork = 0;
    if (n <= 0 || x->sock_err) {
        ERR_clear_error();
        relay_abort(r);
        return;
    }
    if (cork && x->out_len) {
        flush_out(r, i);
        End *feeder = &r->e[1 - i];
        if (!r->finished && x->out_len > HIGH_WATER && !feeder->paused) {
            feeder->paused = 1;
            end_watch(r, 1 - i);
        }
    }
}

/* ------------------------------------------------------------------------------------------ the socket BIO */

/* OpenSSL's writes: sent now, or queued in the end's ``out`` when the socket is full. Never "retry": a queued
 * record counts as written, so SSL_write never has to be repeated with the same arguments, and back-pressure
 * is the relay's (the feeding end is paused), as with the memory BIO this replaces. */
static int fd_write(BIO *b, const char *data, int len) {
    End *x = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (x == NULL || x->fd < 0)
        return -1;
    if (x->cork) {
        if (out_append(x, data, (size_t)len) < 0) {
            x->sock_err = ENOMEM;
            return -1;
        }
        return len;
    }
    if (x->kind == K_HTTP) {
        if (http_sock_write(x, data, (size_t)len) < 0) {
            x->sock_err = errno ? errno : EIO;
            return -1;
        }
        return len;
    }
    if (send_raw(x->owner, x->idx, data, (size_t)len) < 0) {
        x->sock_err = errno ? errno : EIO;
        return -1;
    }
    return len;
}

static int fd_read(BIO *b, char *buf, int len) {
    End *x = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (x == NULL || x->fd < 0)
        return -1;
    if (x->pre_len) {
        size_t n = x->pre_len < (size_t)len ? x->pre_len : (size_t)len;
        memcpy(buf, x->pre + x->pre_off, n);
        x->pre_off += n;
        x->pre_len -= n;
        if (x->pre_len == 0) {
            free(x->pre);
            x->pre = NULL;
            x->pre_off = 0;
        }
        return (int)n;
    }
    if (x->no_sock) {
        BIO_set_retry_read(b);
        return -1;
    }
    ssize_t n = read(x->fd, buf, (size_t)len);
    if (n > 0)
        return (int)n;
    if (n == 0) {
        x->sock_eof = 1;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        BIO_set_retry_read(b);
        return -1;
    }
    x->sock_err = errno;
    return -1;
}

static long fd_ctrl(BIO *b, int cmd, long num, void *ptr) {
    End *x = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* nothing is held here: what send() did not take is in ``out`` */
    case BIO_CTRL_EOF:
        return x != NULL && x->sock_eof;
    default:
        return 0;
    }
}

static int fd_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static int fd_destroy(BIO *b) {
    BIO_set_data(b, NULL); /* the End may be gone already: the SSL object can outlive its relay */
    return 1;
}

/* Send what is queued for the socket, as much as it takes. -1 on a socket error (the caller aborts). */
int end_flush(End *x) {
    while (x->out_len) {
        ssize_t n = send(x->fd, x->out + x->out_off, x->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            return -1;
        }
        x->out_off += (size_t)n;
        x->out_len -= (size_t)n;
    }
    if (x->out_len == 0) {
        x->out_off = 0;
        if (x->out_cap > 4 * READ_CHUNK) {
            /* A burst grew it (up to HIGH_WATER and more): give it back, or an idle keep-alive connection
             * would hold it for its whole life. */
            free(x->out);
            x->out = NULL;
            x->out_cap = 0;
        }
    }
    return 0;
}

static void flush_out(Relay *r, int i) {
    End *x = &r->e[i];
    if (end_flush(x) < 0) {
        relay_abort(r);
        return;
    }
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
        SSL_shutdown(x->ssl); /* close_notify, through fd_write */
        ERR_clear_error();
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

/* Bytes decrypted per call before other sockets get a turn (the socket stays readable: epoll comes back). */
#define DECRYPT_BUDGET (1024 * 1024)

/* Read and decrypt from end i's socket (OpenSSL reads through fd_read, read-ahead on); the plaintext goes to
 * the other end in batches of up to READ_CHUNK (several records, one write). Once paused (the other end's queue
 * is full) or past the budget, the socket is no longer read, but every whole record OpenSSL already holds is
 * still decrypted: no socket event would announce those, and stopping at a record boundary keeps what is
 * queued bounded. ``force``: read the socket even when paused (it reported an error or a hang-up). */
static void decrypt(Relay *r, int i, int force) {
    End *x = &r->e[i];
    size_t have = 0, total = 0;
    int eof = 0;
    for (;;) {
        x->no_sock = (x->paused && !force) || total >= DECRYPT_BUDGET;
        ERR_clear_error();
        int n = SSL_read(x->ssl, pbuf + have, (int)(sizeof pbuf - have));
        if (n > 0) {
            have += (size_t)n;
            total += (size_t)n;
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
        if (err == SSL_ERROR_ZERO_RETURN || (x->sock_eof && !x->sock_err)) {
            eof = 1; /* close_notify, or a TCP FIN without it */
            break;
        }
        if (have)
            deliver(r, 1 - i, pbuf, have);
        relay_abort(r); /* a bad record, a failed MAC, an alert, a reset: nothing more can be trusted here */
        return;
    }
    if (have)
        deliver(r, 1 - i, pbuf, have);
    if (r->finished)
        return;
    if (x->sock_err) {
        relay_abort(r); /* a write inside SSL_read (a key update's answer) failed */
        return;
    }
    check_ticket(r, i);
    if (eof && !r->finished && !x->rd_eof)
        got_eof(r, i);
}

static void read_end(Relay *r, int i, int force) {
    End *x = &r->e[i];
    for (int rounds = 0; rounds < 4; rounds++) {
        if (x->fd < 0 || x->rd_eof || (x->paused && !force) || x->close_pending || r->finished)
            return;
        if (x->ssl != NULL) {
            decrypt(r, i, force);
            x->no_sock = 0;
            return;
        }
        ssize_t n = read(x->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            x->nbytes += (unsigned long long)n;
            deliver(r, 1 - i, rbuf, (size_t)n);
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

void core_reap(Core *c) {
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
            if (Py_TYPE(PyList_GET_ITEM(batch, k)) == &HttpConnType) {
                http_reap(PyList_GET_ITEM(batch, k));
                continue;
            }
            Relay *r = (Relay *)PyList_GET_ITEM(batch, k);
            PyObject *cb = r->on_close;
            r->on_close = NULL;
            Py_CLEAR(r->on_ticket);
            Py_CLEAR(r->sslrefs[0]);
            Py_CLEAR(r->sslrefs[1]);
            for (int i = 0; i < 2; i++) {
                if (r->e[i].bio != NULL)
                    BIO_set_data(r->e[i].bio, NULL); /* the SSL object (and our BIO in it) may live on */
                r->e[i].bio = NULL;
                r->e[i].ssl = NULL;
            }
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
        free(r->e[i].pre);
        r->e[i].pre = NULL;
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

static PyObject *Relay_queued(Relay *r, PyObject *unused) {
    return Py_BuildValue("(nn)", (Py_ssize_t)r->e[0].out_len, (Py_ssize_t)r->e[1].out_len);
}

static PyObject *Relay_get_finished(Relay *r, void *closure) { return PyBool_FromLong(r->finished); }

static PyMethodDef Relay_methods[] = {
    {"close", (PyCFunction)Relay_close, METH_NOARGS,
     "Graceful close: close_notify on TLS ends, flush what is queued, then close both sockets."},
    {"abort", (PyCFunction)Relay_abort, METH_NOARGS, "Close both sockets now, dropping what is queued."},
    {"counts", (PyCFunction)Relay_counts, METH_NOARGS, "(plaintext bytes from end 0, from end 1)"},
    {"queued", (PyCFunction)Relay_queued, METH_NOARGS, "(bytes queued for end 0's socket, for end 1's)"},
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

SSL *ssl_of(PyObject *sslobj, PyObject *context) {
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
        if (SSL_get_rbio(ssl) == NULL || SSL_get_wbio(ssl) == NULL) {
            PyErr_SetString(PyExc_ValueError, "the SSL object has no BIOs");
            return -1;
        }
        x->ssl = ssl;
        Py_INCREF(sslobj);
        r->sslrefs[i] = sslobj;
    }
    x->fd = fd;
    return 0;
}

/* Put our socket BIO under the end's SSL object, keeping what Python's memory BIOs still hold: unread
 * ciphertext becomes ``pre`` (read first), unsent ciphertext is queued to go first (the caller watches for
 * writability). -1 with a Python error if out of memory (nothing changed then). */
int end_take_over(End *x) {
    SSL *ssl = x->ssl;
    BIO *old_r = SSL_get_rbio(ssl), *old_w = SSL_get_wbio(ssl);
    size_t pending = BIO_ctrl_pending(old_r);
    BIO *b = BIO_new(fd_method);
    if (b == NULL || (pending && (x->pre = malloc(pending)) == NULL)) {
        BIO_free(b);
        PyErr_NoMemory();
        return -1;
    }
    if (pending)
        x->pre_len = (size_t)BIO_read(old_r, x->pre, (int)pending);
    char buf[4096];
    int n;
    while ((n = BIO_read(old_w, buf, sizeof buf)) > 0)
        if (out_append(x, buf, (size_t)n) < 0)
            x->sock_err = ENOMEM;
    BIO_set_data(b, x);
    BIO_up_ref(b); /* one reference for the read side, one for the write side: each set0 takes one */
    SSL_set0_rbio(ssl, b);
    SSL_set0_wbio(ssl, b);
    x->bio = b;
    /* Read as much as is there: a bulk transfer's records in one read(). The record buffers stay released
     * while empty (SSL_MODE_RELEASE_BUFFERS, Python's default): keeping them cost 80 KiB per idle TLS
     * connection and measured no faster here. */
    SSL_set_default_read_buffer_len(ssl, READ_CHUNK); /* sixteen full records per read() */
    SSL_set_read_ahead(ssl, 1);
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
    for (int i = 0; i < 2; i++) {
        if (r->e[i].ssl != NULL && end_take_over(&r->e[i]) < 0) {
            if (i == 1 && r->e[0].ssl != NULL) {
                /* end 0's SSL already reads our BIO: this relay cannot go back to Python; close it */
                Py_INCREF(r);
                relay_abort(r);
                core_reap(c);
                return (PyObject *)r;
            }
            epoll_ctl(c->epfd, EPOLL_CTL_DEL, r->e[0].fd, NULL);
            epoll_ctl(c->epfd, EPOLL_CTL_DEL, r->e[1].fd, NULL);
            r->e[0].fd = r->e[1].fd = -1;
            Py_DECREF(r);
            return NULL;
        }
    }
    /* The relay is alive while its sockets are: the core's reference goes with the on_close callback. */
    Py_INCREF(r);
    c->in_poll++;
    for (int i = 0; i < 2; i++) {
        if (r->e[i].sock_err && !r->finished)
            relay_abort(r);
        if (!r->finished)
            end_watch(r, i); /* ciphertext the handshake left queued */
        /* Records that came with the end of the handshake are in ``pre`` or the socket already: read them now,
         * since ``pre`` has no socket event. */
        if (r->e[i].ssl != NULL && !r->finished) {
            decrypt(r, i, 0);
            r->e[i].no_sock = 0;
        }
    }
    c->in_poll--;
    core_reap(c);
    return (PyObject *)r;
}

/* An HTTP connection handed back to Python (a request the native engine does not serve): its socket ``from``
 * becomes end 0 of a new relay whose end 1 is ``fd`` (a socketpair to the Python HTTP server), as if Python had
 * handed both over. The End moves: its BIO and epoll entry are pointed at the new place. */
PyObject *relay_adopt(Core *c, End *from, PyObject *sslref, int fd, PyObject *on_close, const char *data,
                      size_t len) {
    Relay *r = PyObject_New(Relay, &RelayType);
    if (r == NULL)
        return NULL;
    memset((char *)r + sizeof(PyObject), 0, sizeof(Relay) - sizeof(PyObject));
    Py_INCREF(c);
    r->core = c;
    r->ticket_end = -1;
    r->e[0] = *from;
    r->e[0].kind = K_RELAY;
    r->e[0].owner = r;
    r->e[0].idx = 0;
    r->e[0].paused = 0;
    r->e[1].owner = r;
    r->e[1].idx = 1;
    r->e[1].fd = fd;
    Py_XINCREF(sslref);
    r->sslrefs[0] = sslref;
    Py_INCREF(on_close);
    r->on_close = on_close;
    if (r->e[0].bio != NULL)
        BIO_set_data(r->e[0].bio, &r->e[0]);
    struct epoll_event ev;
    ev.events = EPOLLIN;
    ev.data.ptr = &r->e[0];
    epoll_ctl(c->epfd, EPOLL_CTL_MOD, r->e[0].fd, &ev);
    r->e[0].events = EPOLLIN;
    ev.data.ptr = &r->e[1];
    epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev);
    r->e[1].events = EPOLLIN;
    Py_INCREF(r); /* the core's, as in Core.relay */
    end_watch(r, 0);
    /* What the HTTP connection had read but not served goes first; a client that already half-closed has its
     * end of stream passed on after it. */
    deliver(r, 1, data, len);
    if (!r->finished && r->e[0].rd_eof) {
        r->e[0].rd_eof = 0;
        got_eof(r, 0);
    }
    if (!r->finished && r->e[0].ssl != NULL && !r->e[0].rd_eof) {
        /* Records OpenSSL read ahead past the HTTP engine's budget: no socket event would announce them. */
        decrypt(r, 0, 0);
        r->e[0].no_sock = 0;
    }
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
            if (x == NULL) {
                uint64_t v;
                if (read(c->wakefd, &v, sizeof v) < 0 && errno != EAGAIN)
                    PyErr_WriteUnraisable((PyObject *)c);
                continue;
            }
            if (x->kind == K_HTTP)
                http_handle(x, evs[k].events);
            else
                handle(x->owner, x->idx, evs[k].events);
        }
        if (n < MAX_EVENTS)
            break;
    }
    http_run_kicks(c);
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
    c->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev;
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    if (c->wakefd < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->wakefd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    c->dead = PyList_New(0);
    c->kicks = PyList_New(0);
    if (c->dead == NULL || c->kicks == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static void Core_dealloc(Core *c) {
    if (c->epfd >= 0)
        close(c->epfd);
    if (c->wakefd > 0)
        close(c->wakefd);
    Py_XDECREF(c->dead);
    Py_XDECREF(c->kicks);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef Core_methods[] = {
    {"relay", (PyCFunction)Core_relay, METH_VARARGS,
     "relay(fd0, ssl0, ctx0, fd1, ssl1, ctx1, on_close, on_ticket, ticket_end) -> Relay. Takes ownership of "
     "both descriptors; ssl is an _ssl._SSLSocket over memory BIOs with its handshake done, or None."},
    {"http", (PyCFunction)Core_http, METH_VARARGS,
     "http(fd, ssl, ctx, on_request, on_fallback, on_close, peer_ip, extra_response_headers, early=b'') -> "
     "HttpConn: a downstream HTTP/1.1 connection served natively (see _httpcore.c). Takes ownership of the descriptor."},
    {"upstream", (PyCFunction)Core_upstream, METH_VARARGS,
     "upstream(fd, ssl, ctx, on_ticket=None) -> HttpConn: a connection to an upstream (the app, or a mesh endpoint over mTLS) "
     "for native exchanges. Takes ownership of the descriptor."},
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
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&RelayType) < 0 || PyType_Ready(&HttpConnType) < 0 ||
        http_init() < 0)
        return NULL;
    fd_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "meshgw relay socket");
    if (fd_method == NULL || !BIO_meth_set_write(fd_method, fd_write) || !BIO_meth_set_read(fd_method, fd_read) ||
        !BIO_meth_set_ctrl(fd_method, fd_ctrl) || !BIO_meth_set_create(fd_method, fd_create) ||
        !BIO_meth_set_destroy(fd_method, fd_destroy))
        return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CoreType);
    PyModule_AddObject(m, "Core", (PyObject *)&CoreType);
    Py_INCREF(&RelayType);
    PyModule_AddObject(m, "Relay", (PyObject *)&RelayType);
    Py_INCREF(&HttpConnType);
    PyModule_AddObject(m, "HttpConn", (PyObject *)&HttpConnType);
    /* The OpenSSL this module was built against; Python's ssl must use the same library (checked on import
     * by gateway/native.py). */
    PyModule_AddIntConstant(m, "OPENSSL_VERSION_NUMBER", (long)OpenSSL_version_num());
    return m;
}
