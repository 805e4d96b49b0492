/* loop: a worker's event backend, io_uring (src/loop_uring.c) or epoll (src/loop_epoll.c),
 * chosen at start (src/loop.c). Operations (accept, recv, send, connect, timeouts, cancel,
 * close, ...) are queued with loop_*() and their results come back from loop_run_once as
 * backend-neutral completions (struct loop_cqe) with the same semantics on either backend. The
 * only module that knows the backend: every other one sees tags, results, flags and ms. */
#ifndef UPROXY_LOOP_H
#define UPROXY_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "uproxy/log.h"

/* user_data layout: | slot:24 | generation:24 | side:4 | op:12 |. A CQE whose generation differs
 * from its slot's is stale and dropped, so an fd number reused by a new session is never
 * confused with the old one. */
enum loop_op {
	OP_NONE = 0,
	OP_ACCEPT,	 /* multishot accept on a listener; slot = listener index */
	OP_SIGNAL,	 /* read of the signalfd (worker 0) */
	OP_NOTIFY,	 /* read of the worker's eventfd: another worker passes a stop on */
	OP_CANCEL_W,	 /* cancel of a worker-level request */
	OP_SOCKET,	 /* upstream socket creation */
	OP_CONNECT,	 /* upstream connect */
	OP_LINK_TIMEOUT, /* the connect's linked timeout */
	OP_RECV,	 /* multishot recv; side = direction */
	OP_SEND,	 /* send of a direction's queue; side = direction */
	OP_HDR_RECV,	 /* --accept-proxy: recv of the client's header */
	OP_PRESEND,	 /* send of the bytes that go upstream before the client's stream */
	OP_SHUTDOWN,	 /* shutdown(SHUT_WR); side = direction whose EOF it forwards */
	OP_CANCEL,	 /* cancel of a session request; side = side or direction */
	OP_CLOSE,	 /* close; side = which fd */
	OP_PROBE,	 /* active health check; slot = backend id, side = stage */
	OP_STATS,	 /* the /metrics endpoint; slot = connection, side = stage */
	OP_LOG,		 /* access-log write */
	OP__COUNT
};

#define TAG_SLOT_BITS 24
#define TAG_GEN_BITS  24
#define TAG_GEN_MASK  ((1u << TAG_GEN_BITS) - 1)
#define TAG_SLOT_MAX  ((1u << TAG_SLOT_BITS) - 1)

static inline uint64_t tag_make(uint32_t slot, uint32_t gen, unsigned int side, enum loop_op op)
{
	return ((uint64_t)slot << 40) | ((uint64_t)(gen & TAG_GEN_MASK) << 16) |
	       ((uint64_t)(side & 0xf) << 12) | (uint64_t)op;
}
static inline uint32_t tag_slot(uint64_t t)
{
	return (uint32_t)(t >> 40);
}
static inline uint32_t tag_gen(uint64_t t)
{
	return (uint32_t)(t >> 16) & TAG_GEN_MASK;
}
static inline unsigned int tag_side(uint64_t t)
{
	return (unsigned int)(t >> 12) & 0xf;
}
static inline enum loop_op tag_op(uint64_t t)
{
	return (enum loop_op)(t & 0xfff);
}

/* Faults the fault-injection build (meson -Dfault_injection=true, run with UPROXY_FAULT_SEED set)
 * can inject, each counted in loop_stats.faults[]. Always declared, so counters keep one layout;
 * without the option every count stays 0. */
enum loop_fault {
	LOOP_FAULT_SHORT_SEND = 0, /* send/sendmsg submitted with fewer bytes than asked */
	LOOP_FAULT_ENOBUFS,	   /* buffer-select recv completes -ENOBUFS, not submitted */
	LOOP_FAULT_RECV_RESET,	   /* buffer-select recv completes -ECONNRESET */
	LOOP_FAULT_SEND_RESET,	   /* send/sendmsg completes -ECONNRESET */
	LOOP_FAULT_SOCKET,	   /* socket completes -EMFILE */
	LOOP_FAULT_CONNECT,	   /* connect completes -ECONNREFUSED */
	LOOP_FAULT_ENTER,	   /* the wait's system call fails with -EAGAIN or -ENOMEM */
	LOOP_FAULT_SQ_FULL,	   /* an SQE finds the SQ full and the submit failing: backlog */
	LOOP_FAULT_CQ_OVERFLOW,	   /* completions are left unreaped for a few iterations, then
				    * the overflow flush runs as if the ring had overflowed */
	LOOP_FAULT_SESSION_START,  /* loop_fault_session_start() said true (ENOMEM at accept) */
	LOOP_FAULT_FATAL,	   /* UPROXY_FAULT_FATAL_AFTER: an enter failed with -EBADF */
	LOOP_FAULT__COUNT
};

/* "short_send", "enobufs", ...: the names UPROXY_FAULT_KINDS takes and the summary prints. */
const char *loop_fault_name(enum loop_fault f);

struct loop_stats {
	uint64_t enters;	/* system calls that submit or wait */
	uint64_t submitted;	/* requests submitted */
	uint64_t cqes;		/* completions handled (synthetic ones included) */
	uint64_t sq_full;	/* early submits because the queue was full */
	uint64_t cq_overflow;	/* completion-queue overflows seen (and reaped) */
	uint64_t cq_lost;	/* completions the kernel dropped (a bug if non-zero) */
	uint64_t enter_retries; /* transient submit/wait failures backed off and retried */
	uint64_t sq_backlog;	/* requests that waited in the loop's backlog (queue full, submit
				   failed) */
	uint64_t faults[LOOP_FAULT__COUNT]; /* injected faults (fault-injection build only) */
	const char *backend;		    /* "io_uring" or "epoll" (a string literal) */
};

/* A completion, whatever the backend: the tag its request was submitted with, its result (bytes
 * or -errno), and flags. */
struct loop_cqe {
	uint64_t tag;
	int32_t res;
	uint16_t flags; /* LOOP_CQE_* */
	uint16_t bid;	/* with LOOP_CQE_BUFFER: the (first) pool buffer the bytes landed in */
};

#define LOOP_CQE_MORE	1u /* a multishot request stays armed: more completions follow */
#define LOOP_CQE_BUFFER 2u /* the bytes are in pool buffer bid (and, for a bundle, the next) */

/* A worker's loop: opaque outside src/loop*.c. */
struct loop;

enum loop_backend {
	LOOP_BACKEND_AUTO = 0, /* io_uring if it can be set up here, else epoll */
	LOOP_BACKEND_IO_URING,
	LOOP_BACKEND_EPOLL,
};

/* Every backend this binary has, for --version: "io_uring epoll". */
#define LOOP_BACKENDS_BUILT "io_uring epoll"

/* "auto", "io_uring", "epoll". */
const char *loop_backend_str(enum loop_backend b);

/* Decides, once per process, the backend every worker then uses. AUTO sets up (and probes) a
 * small io_uring and falls back to epoll when that fails with EPERM or ENOSYS (a seccomp profile,
 * kernel.io_uring_disabled, no CONFIG_IO_URING) or the probe fails; why then says why, and how
 * to enable io_uring; otherwise why is "". An explicit choice is returned as is. */
enum loop_backend loop_choose_backend(enum loop_backend requested, char *why, size_t whylen);

/* Creates a loop on backend (AUTO: as loop_choose_backend would) with room for sq_entries
 * queued requests and cq_entries completions. On failure returns -errno and writes an
 * explanation for the operator. */
int loop_new(enum loop_backend backend, unsigned int sq_entries, unsigned int cq_entries,
	     struct loop **out, char *why, size_t whylen);
/* Ends every request still pending and frees the loop. */
void loop_free(struct loop *l);

/* Its counters. */
const struct loop_stats *loop_stats(const struct loop *l);

/* One line for a debug log: the features the backend runs with. */
void loop_describe(const struct loop *l, char *buf, size_t len);
/* "io_uring" or "epoll". */
const char *loop_backend_name(const struct loop *l);

/* Checks that the running kernel has every operation uproxy needs; -ENOTSUP with why if not.
 * (Always 0 on epoll.) */
int loop_probe(struct loop *l, char *why, size_t whylen);

/* Explains a set-up failure in words (EPERM, ENOSYS, ENOMEM, ...). */
const char *loop_setup_error(int err);

typedef void (*loop_cqe_fn)(void *ctx, const struct loop_cqe *c);

/* Submits everything queued and waits for at least one completion or timeout_ms (< 0: no
 * limit) in one system call, then hands every available completion to fn, in batches. A transient
 * enter error (EINTR, EAGAIN, ENOMEM, EBUSY) is counted, backed off (1..100 ms) and returns
 * normally; only a fatal one returns -errno (the worker must then close its sessions and the
 * process exit). Returns the number of CQEs handled or -errno. */
int loop_run_once(struct loop *l, loop_cqe_fn fn, void *ctx, int64_t timeout_ms);

/* Fault injection: true when this accepted connection must be refused as if session set-up had
 * run out of memory (the caller closes it with an RST). Always false without the option. */
#ifdef UPROXY_FAULT_INJECTION
bool loop_fault_session_start(struct loop *l);
#else
static inline bool loop_fault_session_start(struct loop *l)
{
	(void)l;
	return false;
}
#endif

/* The pool of provided buffers the buffer-select receives take from: registered once with
 * room for entries (a power of two) buffers; buffers are added at offsets 0.. and published
 * together by loop_pbuf_publish. -errno with why on failure. */
int loop_pbuf_register(struct loop *l, uint16_t bgid, uint32_t entries, char *why, size_t whylen);
void loop_pbuf_add(struct loop *l, void *addr, uint32_t len, uint16_t bid, int offset);
void loop_pbuf_publish(struct loop *l, int count);

/* Requests: each is queued (submitted first if the queue is full, or kept in the loop's backlog
 * if even that fails) and completes once with its tag. They never fail. */
void loop_accept_multishot(struct loop *l, int fd, uint64_t tag);
void loop_accept(struct loop *l, int fd, uint64_t tag);
void loop_read(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
/* Completes with -ETIME after ms milliseconds. */
void loop_timeout(struct loop *l, uint32_t ms, uint64_t tag);
void loop_socket(struct loop *l, int domain, int type, int protocol, uint64_t tag);
void loop_connect(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len, uint64_t tag);
/* A connect linked to a timeout: past ms the connect fails with -ECANCELED. Two
 * completions: tag and ttag. */
void loop_connect_timeout(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			  uint32_t ms, uint64_t tag, uint64_t ttag);
void loop_recv_multishot(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
/* Whether one recv completion may fill several provided buffers (io_uring: Linux 6.10; epoll:
 * always, one readv over consecutive ring entries). */
bool loop_has_recv_bundle(const struct loop *l);
/* A multishot recv whose completions are bundles: res bytes in consecutive ring entries
 * starting with the buffer the CQE names (6.10; check loop_has_recv_bundle first). */
void loop_recv_bundle(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
/* A single recv into one provided buffer (no LOOP_CQE_MORE). */
void loop_recv(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
void loop_send(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
/* A plain recv into buf. */
void loop_recv_buf(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
/* recv into buf / send from buf, each linked to a timeout (two CQEs: tag and ttag). */
void loop_recv_buf_timeout(struct loop *l, int fd, void *buf, unsigned int len, uint32_t ms,
			   uint64_t tag, uint64_t ttag);
void loop_send_timeout(struct loop *l, int fd, const void *buf, unsigned int len, uint32_t ms,
		       uint64_t tag, uint64_t ttag);
/* write(2) at the file's current position (O_APPEND files). */
void loop_write(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
void loop_sendmsg(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag);
void loop_shutdown(struct loop *l, int fd, int how, uint64_t tag);
void loop_close(struct loop *l, int fd, uint64_t tag);
/* Cancels the request submitted with tag target. */
void loop_cancel(struct loop *l, uint64_t target, uint64_t tag);
/* Cancels every request on fd, then closes it, whatever the cancel's outcome (hard link). */
void loop_cancel_fd_then_close(struct loop *l, int fd, uint64_t cancel_tag, uint64_t close_tag);

#endif
