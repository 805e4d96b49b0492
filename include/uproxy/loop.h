/* loop: the one io_uring ring of a worker. Set-up and feature probing, SQE getting (submitting
 * when the SQ is full), the single submit_and_wait per iteration, CQE draining in batches.
 * The only module that calls io_uring_prep_* helpers; the others ask it through loop_*(). */
#ifndef UPROXY_LOOP_H
#define UPROXY_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "uproxy/compat.h"
#include "uproxy/log.h"

/* user_data layout: | slot:24 | generation:24 | side:4 | op:12 |. A CQE whose generation differs
 * from its slot's is stale and dropped, so an fd number reused by a new session is never
 * confused with the old one. */
enum loop_op {
	OP_NONE = 0,
	OP_ACCEPT,   /* multishot accept on a listener; slot = listener index */
	OP_SIGNAL,   /* read of the signalfd (worker 0) */
	OP_NOTIFY,   /* read of the worker's eventfd: another worker passes a stop on */
	OP_TIMER,    /* worker timers (accept back-off, shutdown deadline); side = timer kind */
	OP_CANCEL_W, /* cancel of a worker-level request */
	OP_SOCKET,   /* upstream socket creation */
	OP_CONNECT,  /* upstream connect */
	OP_LINK_TIMEOUT, /* the connect's linked timeout */
	OP_RECV,     /* multishot recv; side = direction */
	OP_SEND,     /* send of a direction's queue; side = direction */
	OP_HDR_RECV, /* --accept-proxy: recv of the client's header */
	OP_PRESEND,  /* send of the bytes that go upstream before the client's stream */
	OP_SHUTDOWN, /* shutdown(SHUT_WR); side = direction whose EOF it forwards */
	OP_CANCEL,   /* cancel of a session request; side = side or direction */
	OP_CLOSE,    /* close; side = which fd */
	OP_PROBE,    /* active health check; slot = backend id, side = stage */
	OP_STATS,    /* the /metrics endpoint; slot = connection, side = stage */
	OP_LOG,      /* access-log write */
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
	LOOP_FAULT_ENTER,	   /* io_uring_enter fails with -EAGAIN or -ENOMEM, not entered */
	LOOP_FAULT_SQ_FULL,	   /* an SQE finds the SQ full and the submit failing: backlog */
	LOOP_FAULT_CQ_OVERFLOW,	   /* completions are left unreaped for a few iterations, then
				    * the overflow flush runs as if IORING_SQ_CQ_OVERFLOW were set */
	LOOP_FAULT_SESSION_START,  /* loop_fault_session_start() said true (ENOMEM at accept) */
	LOOP_FAULT_FATAL,	   /* UPROXY_FAULT_FATAL_AFTER: an enter failed with -EBADF */
	LOOP_FAULT__COUNT
};

/* "short_send", "enobufs", ...: the names UPROXY_FAULT_KINDS takes and the summary prints. */
const char *loop_fault_name(enum loop_fault f);

struct loop_stats {
	uint64_t enters;     /* io_uring_enter calls made by the loop */
	uint64_t submitted;  /* SQEs submitted */
	uint64_t cqes;	     /* CQEs handled (synthetic ones included) */
	uint64_t sq_full;    /* early submits because the SQ was full */
	uint64_t cq_overflow; /* CQ overflow episodes seen (IORING_SQ_CQ_OVERFLOW or koverflow) */
	uint64_t cq_lost;     /* completions the kernel dropped (koverflow; a bug if non-zero) */
	uint64_t enter_retries; /* transient io_uring_enter failures backed off and retried */
	uint64_t sq_backlog;  /* SQEs that waited in the userspace backlog (SQ full, submit failed) */
	uint64_t faults[LOOP_FAULT__COUNT]; /* injected faults (fault-injection build only) */
};

struct loop_fault_state;

struct loop {
	struct io_uring ring;
	unsigned int setup_flags; /* the IORING_SETUP_* flags the kernel accepted */
	bool ring_fd_registered;
	struct loop_stats st;
	/* SQEs prepared while the SQ was full and could not be submitted, oldest first at
	 * [bl_head]; flushed into the ring, in order and whole link chains at a time, before the
	 * next enter. While non-empty every new SQE goes behind them. */
	struct io_uring_sqe *bl;
	unsigned int bl_head, bl_len, bl_cap;
	unsigned int chain_left; /* SQEs still to come of a chain reserve_sqes() placed */
	bool chain_backlog;	 /* ... and whether they go to the backlog */
	/* Synthetic completions (fault injection), handed out at the next loop_run_once. */
	struct io_uring_cqe *syn;
	unsigned int syn_len, syn_cap;
	unsigned int backoff_ms; /* current back-off after a transient enter error, 0 if none */
	unsigned int koverflow_seen;
	struct log_ratelimit rl_overflow;
	struct loop_fault_state *fault; /* NULL unless injecting */
};

/* Creates the ring. On failure returns -errno and writes an explanation for the operator. */
int loop_init(struct loop *l, unsigned int sq_entries, unsigned int cq_entries, char *why,
	      size_t whylen);
void loop_exit(struct loop *l);

/* Checks that the running kernel has every operation uproxy needs; -ENOTSUP with why if not. */
int loop_probe(struct loop *l, char *why, size_t whylen);

/* Explains an io_uring_queue_init failure in words (EPERM, ENOSYS, ENOMEM, ...). */
const char *loop_setup_error(int err);

typedef void (*loop_cqe_fn)(void *ctx, const struct io_uring_cqe *cqe);

/* Submits everything queued and waits for at least one completion or timeout_ms (< 0: no
 * limit) in one io_uring_enter, then hands every available CQE to fn, in batches. A transient
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

/* Submission helpers: each fills one SQE (submitting first if the SQ is full, or queueing it
 * in the loop's backlog if even that fails). They never fail. */
void loop_accept_multishot(struct loop *l, int fd, uint64_t tag);
void loop_accept(struct loop *l, int fd, uint64_t tag);
void loop_read(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
void loop_timeout(struct loop *l, struct __kernel_timespec *ts, uint64_t tag);
void loop_socket(struct loop *l, int domain, int type, int protocol, uint64_t tag);
void loop_connect(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len, uint64_t tag);
/* A connect linked to a timeout: past ts the connect fails with -ECANCELED. ts must stay valid
 * until the next submit. Two CQEs: tag and ttag. */
void loop_connect_timeout(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			  struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag);
void loop_recv_multishot(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
/* Whether the kernel fills several provided buffers per recv completion (6.10). */
bool loop_has_recv_bundle(const struct loop *l);
/* A multishot recv whose completions are bundles: res bytes in consecutive ring entries
 * starting with the buffer the CQE names (6.10; check loop_has_recv_bundle first). */
void loop_recv_bundle(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
/* A single recv into one provided buffer (no IORING_CQE_F_MORE). */
void loop_recv(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
void loop_send(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
/* A plain recv into buf. */
void loop_recv_buf(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
/* recv into buf / send from buf, each linked to a timeout (two CQEs: tag and ttag). */
void loop_recv_buf_timeout(struct loop *l, int fd, void *buf, unsigned int len,
			   struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag);
void loop_send_timeout(struct loop *l, int fd, const void *buf, unsigned int len,
		       struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag);
/* write(2) at the file's current position (O_APPEND files). */
void loop_write(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
void loop_sendmsg(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag);
void loop_shutdown(struct loop *l, int fd, int how, uint64_t tag);
void loop_close(struct loop *l, int fd, uint64_t tag);
/* Cancels the request whose user_data is target. */
void loop_cancel(struct loop *l, uint64_t target, uint64_t tag);
/* Cancels every request on fd, then closes it, whatever the cancel's outcome (hard link). */
void loop_cancel_fd_then_close(struct loop *l, int fd, uint64_t cancel_tag, uint64_t close_tag);

#endif
