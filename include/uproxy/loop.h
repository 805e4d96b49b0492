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

struct loop_stats {
	uint64_t enters;     /* io_uring_enter calls made by the loop */
	uint64_t submitted;  /* SQEs submitted */
	uint64_t cqes;	     /* CQEs handled */
	uint64_t sq_full;    /* early submits because the SQ was full */
	uint64_t cq_overflow; /* kernel-reported CQ overflows (a bug if non-zero) */
};

struct loop {
	struct io_uring ring;
	unsigned int setup_flags; /* the IORING_SETUP_* flags the kernel accepted */
	bool ring_fd_registered;
	struct loop_stats st;
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
 * limit) in one io_uring_enter, then hands every available CQE to fn, in batches. Returns the
 * number handled or -errno. */
int loop_run_once(struct loop *l, loop_cqe_fn fn, void *ctx, int64_t timeout_ms);

/* Submission helpers: each fills one SQE (submitting first if the SQ is full). */
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
