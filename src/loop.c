/* loop: the public face of the event loop. Chooses the backend (io_uring, or epoll where
 * io_uring cannot be set up) once per process, and passes every loop_*() call through the
 * chosen backend's ops table (src/loop_uring.c, src/loop_epoll.c). Holds no backend state. */
#include "loop_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *loop_backend_str(enum loop_backend b)
{
	switch (b) {
	case LOOP_BACKEND_IO_URING:
		return "io_uring";
	case LOOP_BACKEND_EPOLL:
		return "epoll";
	default:
		return "auto";
	}
}

enum loop_backend loop_choose_backend(enum loop_backend requested, char *why, size_t whylen)
{
	struct loop *l;
	char err[512];
	int rc;

	if (whylen > 0)
		why[0] = '\0';
	if (requested != LOOP_BACKEND_AUTO)
		return requested;
	/* A small trial ring: the workers' rings are set up by each worker; this one only asks
	 * whether io_uring may be used here at all. */
	rc = loop_uring_new(8, 16, &l, err, sizeof(err));
	if (rc == -EPERM || rc == -ENOSYS) {
		/* loop_setup_error says how to allow it (sysctl, seccomp profile). */
		snprintf(why, whylen, "running on epoll, not io_uring: %s", loop_setup_error(-rc));
		return LOOP_BACKEND_EPOLL;
	}
	if (rc < 0) {
		/* Anything else (locked memory, fds) is worth reporting as an io_uring failure:
		 * the worker repeats the set-up and explains it. */
		return LOOP_BACKEND_IO_URING;
	}
	rc = l->ops->probe(l, err, sizeof(err));
	l->ops->free(l);
	if (rc < 0) {
		snprintf(why, whylen, "running on epoll, not io_uring: %s", err);
		return LOOP_BACKEND_EPOLL;
	}
	return LOOP_BACKEND_IO_URING;
}

int loop_new(enum loop_backend backend, unsigned int sq_entries, unsigned int cq_entries,
	     struct loop **out, char *why, size_t whylen)
{
	if (backend == LOOP_BACKEND_AUTO) {
		char ignored[8];

		backend = loop_choose_backend(backend, ignored, sizeof(ignored));
	}
	if (backend == LOOP_BACKEND_EPOLL)
		return loop_epoll_new(sq_entries, cq_entries, out, why, whylen);
	return loop_uring_new(sq_entries, cq_entries, out, why, whylen);
}

void loop_free(struct loop *l)
{
	if (l != NULL)
		l->ops->free(l);
}

const struct loop_stats *loop_stats(const struct loop *l)
{
	return &l->st;
}

void loop_describe(const struct loop *l, char *buf, size_t len)
{
	l->ops->describe(l, buf, len);
}

const char *loop_backend_name(const struct loop *l)
{
	return l->ops->name;
}

int loop_probe(struct loop *l, char *why, size_t whylen)
{
	return l->ops->probe(l, why, whylen);
}

int loop_run_once(struct loop *l, loop_cqe_fn fn, void *ctx, int64_t timeout_ms)
{
	return l->ops->run_once(l, fn, ctx, timeout_ms);
}

#ifdef UPROXY_FAULT_INJECTION
bool loop_fault_session_start(struct loop *l)
{
	return l->ops->fault_session_start != NULL && l->ops->fault_session_start(l);
}
#endif

int loop_pbuf_register(struct loop *l, uint16_t bgid, uint32_t entries, char *why, size_t whylen)
{
	return l->ops->pbuf_register(l, bgid, entries, why, whylen);
}

void loop_pbuf_add(struct loop *l, void *addr, uint32_t len, uint16_t bid, int offset)
{
	l->ops->pbuf_add(l, addr, len, bid, offset);
}

void loop_pbuf_publish(struct loop *l, int count)
{
	l->ops->pbuf_publish(l, count);
}

void loop_accept_multishot(struct loop *l, int fd, uint64_t tag)
{
	l->ops->accept_multishot(l, fd, tag);
}

void loop_accept(struct loop *l, int fd, uint64_t tag)
{
	l->ops->accept(l, fd, tag);
}

void loop_read(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	l->ops->read(l, fd, buf, len, tag);
}

void loop_timeout(struct loop *l, uint32_t ms, uint64_t tag)
{
	l->ops->timeout(l, ms, tag);
}

void loop_socket(struct loop *l, int domain, int type, int protocol, uint64_t tag)
{
	l->ops->socket(l, domain, type, protocol, tag);
}

void loop_connect(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len, uint64_t tag)
{
	l->ops->connect(l, fd, sa, len, tag);
}

void loop_connect_timeout(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			  uint32_t ms, uint64_t tag, uint64_t ttag)
{
	l->ops->connect_timeout(l, fd, sa, len, ms, tag, ttag);
}

void loop_recv_multishot(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	l->ops->recv_multishot(l, fd, bgid, tag);
}

bool loop_has_recv_bundle(const struct loop *l)
{
	return l->ops->has_recv_bundle(l);
}

void loop_recv_bundle(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	l->ops->recv_bundle(l, fd, bgid, tag);
}

void loop_recv(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	l->ops->recv(l, fd, bgid, tag);
}

void loop_send(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	l->ops->send(l, fd, buf, len, tag);
}

void loop_recv_buf(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	l->ops->recv_buf(l, fd, buf, len, tag);
}

void loop_recv_buf_timeout(struct loop *l, int fd, void *buf, unsigned int len, uint32_t ms,
			   uint64_t tag, uint64_t ttag)
{
	l->ops->recv_buf_timeout(l, fd, buf, len, ms, tag, ttag);
}

void loop_send_timeout(struct loop *l, int fd, const void *buf, unsigned int len, uint32_t ms,
		       uint64_t tag, uint64_t ttag)
{
	l->ops->send_timeout(l, fd, buf, len, ms, tag, ttag);
}

void loop_write(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	l->ops->write(l, fd, buf, len, tag);
}

void loop_sendmsg(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag)
{
	l->ops->sendmsg(l, fd, msg, tag);
}

void loop_shutdown(struct loop *l, int fd, int how, uint64_t tag)
{
	l->ops->shutdown(l, fd, how, tag);
}

void loop_close(struct loop *l, int fd, uint64_t tag)
{
	l->ops->close(l, fd, tag);
}

void loop_cancel(struct loop *l, uint64_t target, uint64_t tag)
{
	l->ops->cancel(l, target, tag);
}

void loop_cancel_fd_then_close(struct loop *l, int fd, uint64_t cancel_tag, uint64_t close_tag)
{
	l->ops->cancel_fd_then_close(l, fd, cancel_tag, close_tag);
}
