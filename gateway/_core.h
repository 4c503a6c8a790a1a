/* What the two halves of the native data path share: gateway/_relaycore.c (the core, L4 relays) and
 * gateway/_httpcore.c (HTTP/1.1 exchanges). */
#ifndef MESHGW_CORE_H
#define MESHGW_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <openssl/bio.h>
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

#define READ_CHUNK (256 * 1024)
/* Bytes waiting for a slow socket past which the end feeding it stops being read (as PENDING_LIMIT in l4.py),
 * and below which it is read again. */
#define HIGH_WATER (256 * 1024)
#define LOW_WATER (64 * 1024)
#define MAX_EVENTS 64


/* What an epoll event points at: a relay end or an HTTP connection's socket (``kind``). */
enum { K_RELAY = 0, K_HTTP = 1 };

typedef struct {
    int kind;
    void *owner; /* the Relay or the HttpConn */
    int idx;
    int fd;
    SSL *ssl; /* NULL: plaintext end */
    BIO *bio;  /* ours, on the socket: the SSL's read and write BIO */
    char *pre; /* ciphertext read before the hand-over (Python's incoming BIO): OpenSSL gets it first */
    size_t pre_off, pre_len;
    int sock_eof;  /* the socket read returned 0 */
    int sock_err;  /* a socket error seen inside OpenSSL's BIO calls (errno) */
    int cork;      /* fd_write queues instead of sending: several records leave in one send() */
    int no_sock;   /* fd_read gives OpenSSL only what it holds, not the socket: paused or over budget */
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
    PyObject *dead;  /* relays and HTTP connections finished during a poll: callbacks run once the batch is done */
    PyObject *kicks; /* HTTP connections with input to look at again (resumed, or their exchange ended) */
    int wakefd;      /* an eventfd in the epoll set: kicks left for the next poll make it readable */
} Core;


extern BIO_METHOD *fd_method;
extern PyTypeObject HttpConnType;

int out_append(End *x, const char *data, size_t len);
int end_send(End *x, const char *data, size_t len);
int end_flush(End *x);
SSL *ssl_of(PyObject *sslobj, PyObject *context);
int end_take_over(End *x);
void core_reap(Core *c);
PyObject *relay_adopt(Core *c, End *from, PyObject *sslref, int fd, PyObject *on_close, const char *data,
                      size_t len);

/* _httpcore.c */
int http_sock_write(End *x, const char *data, size_t len);
void http_handle(End *x, uint32_t events);
void http_run_kicks(Core *c);
void http_reap(PyObject *conn);
PyObject *Core_http(Core *c, PyObject *args);
PyObject *Core_upstream(Core *c, PyObject *args);
double mono_now(void);
int http_init(void);

#endif
