/* loop: owns the io_uring ring. Everything that touches SQEs or the CQ lives here, so a second
 * backend (epoll) can later stand behind the same functions. Must never block except in the
 * one submit-and-wait per iteration. */
#include "uproxy/loop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "uproxy/log.h"

/* CQEs handed out per peek; large enough that a busy iteration takes few peeks. */
#define LOOP_CQE_BATCH 256

const char *loop_setup_error(int err)
{
	switch (err) {
	case EPERM:
		return "io_uring is not permitted here (EPERM): either the sysctl "
		       "kernel.io_uring_disabled is set (run 'sysctl kernel.io_uring_disabled=0' as "
		       "root, or add this user to kernel.io_uring_group when it is 1), or a seccomp "
		       "profile blocks io_uring_setup (Docker's default profile does: run the "
		       "container with --security-opt seccomp=unconfined or a profile allowing "
		       "io_uring_setup, io_uring_enter and io_uring_register)";
	case ENOSYS:
		return "this kernel has no io_uring (ENOSYS): it was built without CONFIG_IO_URING "
		       "or is older than 5.1; uproxy needs Linux 6.1 or newer";
	case ENOMEM:
		return "not enough locked memory for the io_uring rings (ENOMEM): raise "
		       "'ulimit -l' (RLIMIT_MEMLOCK) or use a kernel newer than 5.12";
	case EMFILE:
	case ENFILE:
		return "no file descriptor left for the io_uring instance (EMFILE/ENFILE)";
	case EINVAL:
		return "the kernel rejected the io_uring parameters (EINVAL): kernel too old?";
	default:
		return strerror(err);
	}
}

int loop_init(struct loop *l, unsigned int sq_entries, unsigned int cq_entries, char *why,
	      size_t whylen)
{
	/* Most capable first. DEFER_TASKRUN (6.1) runs completions only when we ask, in our own
	 * thread, which batches them; each fallback drops what an older kernel refuses. */
	static const unsigned int tries[] = {
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
			IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
		0,
	};
	int rc = -EINVAL;

	memset(l, 0, sizeof(*l));
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;

		memset(&p, 0, sizeof(p));
		p.flags = tries[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = cq_entries;
		rc = io_uring_queue_init_params(sq_entries, &l->ring, &p);
		if (rc == 0) {
			l->setup_flags = tries[i];
			break;
		}
		if (rc != -EINVAL)
			break;
	}
	if (rc < 0) {
		snprintf(why, whylen, "cannot set up io_uring: %s", loop_setup_error(-rc));
		return rc;
	}
	/* A registered ring fd saves an fdget/fdput per io_uring_enter (5.18). */
	l->ring_fd_registered = io_uring_register_ring_fd(&l->ring) == 1;
	return 0;
}

void loop_exit(struct loop *l)
{
	io_uring_queue_exit(&l->ring);
}

int loop_probe(struct loop *l, char *why, size_t whylen)
{
	static const struct {
		int op;
		const char *name;
	} needed[] = {
		{ IORING_OP_ACCEPT, "ACCEPT" },	      { IORING_OP_CONNECT, "CONNECT" },
		{ IORING_OP_RECV, "RECV" },	      { IORING_OP_SEND, "SEND" },
		{ IORING_OP_SENDMSG, "SENDMSG" },     { IORING_OP_SHUTDOWN, "SHUTDOWN" },
		{ IORING_OP_CLOSE, "CLOSE" },	      { IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL" },
		{ IORING_OP_SOCKET, "SOCKET" },	      { IORING_OP_READ, "READ" },
		{ IORING_OP_TIMEOUT, "TIMEOUT" },
	};
	struct io_uring_probe *probe = io_uring_get_probe_ring(&l->ring);
	struct utsname u;
	int major = 0, minor = 0;

	if (probe == NULL) {
		snprintf(why, whylen, "cannot probe io_uring operations (kernel older than 5.6?)");
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
		if (!io_uring_opcode_supported(probe, needed[i].op)) {
			snprintf(why, whylen,
				 "this kernel's io_uring lacks IORING_OP_%s; uproxy needs Linux 6.1 "
				 "or newer",
				 needed[i].name);
			io_uring_free_probe(probe);
			return -ENOTSUP;
		}
	}
	io_uring_free_probe(probe);
	/* Multishot recv and provided-buffer rings cannot be probed by opcode: they came with 6.0
	 * and 5.19. */
	if (uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
	    (major < 6 || (major == 6 && minor < 1))) {
		snprintf(why, whylen,
			 "kernel %s is too old: uproxy needs Linux 6.1 or newer (multishot recv, "
			 "provided-buffer rings)",
			 u.release);
		return -ENOTSUP;
	}
	return 0;
}

static struct io_uring_sqe *get_sqe(struct loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);

	for (int tries = 0; sqe == NULL && tries < 8; tries++) {
		int rc;

		l->st.sq_full++;
		rc = io_uring_submit(&l->ring);
		l->st.enters++;
		if (rc > 0)
			l->st.submitted += (uint64_t)rc;
		sqe = io_uring_get_sqe(&l->ring);
	}
	if (sqe == NULL) {
		/* Only possible if the kernel refuses submissions (CQ overflow backlog): the ring
		 * is mis-sized, which is a bug we must not paper over. */
		log_error("io_uring submission queue stuck full; aborting");
		abort();
	}
	return sqe;
}

/* Makes room for n SQEs that must stay contiguous (a link chain). */
static void reserve_sqes(struct loop *l, unsigned int n)
{
	if (io_uring_sq_space_left(&l->ring) < n) {
		int rc = io_uring_submit(&l->ring);

		l->st.sq_full++;
		l->st.enters++;
		if (rc > 0)
			l->st.submitted += (uint64_t)rc;
	}
}

int loop_run_once(struct loop *l, loop_cqe_fn fn, void *ctx, int64_t timeout_ms)
{
	struct io_uring_cqe *cqes[LOOP_CQE_BATCH];
	unsigned int overflow;
	int rc, total = 0;

	if (timeout_ms < 0) {
		rc = io_uring_submit_and_wait(&l->ring, 1);
	} else {
		/* One enter with a timeout argument (IORING_FEAT_EXT_ARG, 5.11): no timeout SQE. */
		struct __kernel_timespec ts = { .tv_sec = timeout_ms / 1000,
						.tv_nsec = (timeout_ms % 1000) * 1000000 };
		struct io_uring_cqe *cqe;

		rc = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
	}
	l->st.enters++;
	if (rc > 0)
		l->st.submitted += (uint64_t)rc;
	else if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY && rc != -EAGAIN)
		return rc;
	for (;;) {
		unsigned int n = io_uring_peek_batch_cqe(&l->ring, cqes, LOOP_CQE_BATCH);

		for (unsigned int i = 0; i < n; i++)
			fn(ctx, cqes[i]);
		io_uring_cq_advance(&l->ring, n);
		total += (int)n;
		if (n < LOOP_CQE_BATCH)
			break;
	}
	l->st.cqes += (uint64_t)total;
	overflow = *l->ring.cq.koverflow;
	if (overflow != l->st.cq_overflow) {
		log_error("io_uring completion queue overflowed %u times; the CQ is undersized",
			  overflow - (unsigned int)l->st.cq_overflow);
		l->st.cq_overflow = overflow;
	}
	return total;
}

void loop_accept_multishot(struct loop *l, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_accept(struct loop *l, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_read(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_read(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_timeout(struct loop *l, struct __kernel_timespec *ts, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_socket(struct loop *l, int domain, int type, int protocol, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_socket(sqe, domain, type, protocol, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_connect(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_connect(sqe, fd, sa, len);
	io_uring_sqe_set_data64(sqe, tag);
}

static void link_timeout(struct loop *l, struct __kernel_timespec *ts, uint64_t ttag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_link_timeout(sqe, ts, 0);
	io_uring_sqe_set_data64(sqe, ttag);
}

void loop_connect_timeout(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			  struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag)
{
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_connect(sqe, fd, sa, len);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ts, ttag);
}

void loop_recv_multishot(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = bgid;
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_recv(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = bgid;
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_recv_buf(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_recv(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_send(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_recv_buf_timeout(struct loop *l, int fd, void *buf, unsigned int len,
			   struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag)
{
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ts, ttag);
}

void loop_send_timeout(struct loop *l, int fd, const void *buf, unsigned int len,
		       struct __kernel_timespec *ts, uint64_t tag, uint64_t ttag)
{
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ts, ttag);
}

void loop_write(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	/* offset -1: the file position, which O_APPEND keeps at the end. */
	io_uring_prep_write(sqe, fd, buf, len, (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_sendmsg(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_shutdown(struct loop *l, int fd, int how, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_shutdown(sqe, fd, how);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_close(struct loop *l, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_cancel(struct loop *l, uint64_t target, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void loop_cancel_fd_then_close(struct loop *l, int fd, uint64_t cancel_tag, uint64_t close_tag)
{
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	/* Hard link: the close runs even when the cancel found nothing (-ENOENT). */
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, cancel_tag);
	sqe = get_sqe(l);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, close_tag);
}

/* ---- receive bundles (6.10) ---- */

bool loop_has_recv_bundle(const struct loop *l)
{
	return l->ring.features & IORING_FEAT_RECVSEND_BUNDLE;
}

void loop_recv_bundle(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	/* Multishot, and each completion may fill several consecutive buffers of the ring. */
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->ioprio |= IORING_RECVSEND_BUNDLE;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = bgid;
	io_uring_sqe_set_data64(sqe, tag);
}
