/* loop_epoll: the epoll backend of the loop, for hosts where io_uring cannot be set up (a
 * container's seccomp profile, kernel.io_uring_disabled). Gives every loop_*() operation the
 * completion semantics of the io_uring backend, readiness-driven: loop_*() queues an operation
 * (the submission queue, kept in order like io_uring's SQ), loop_run_once starts the queued ones
 * in order before it waits (so after the worker's buffer commit, as io_uring submits), each is
 * tried at once, parked on its fd when the socket is not ready, and retried on the fd's next
 * edge-triggered event; results wait in a userspace queue that only loop_run_once hands out
 * (never from inside a loop_*() call). Owns the epoll fd, the per-fd queues of parked operations,
 * the timers and the userspace copy of the provided-buffer ring. */
#include "loop_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Events taken per epoll_wait; completions are not bounded by it. */
#define EP_EVENTS 256
/* A multishot receive fills at most this many pool buffers per event before the fd goes to the
 * back of the retry list, so one fast sender cannot monopolise an iteration (io_uring's kernel
 * loop stops at 32 retries; 16 x 16 KiB = 256 KiB per turn). */
#define EP_RECV_BURST 16u
/* Connections a multishot accept takes per event before the others get a turn. */
#define EP_ACCEPT_BURST 64u
#define EP_CHUNK	256 /* operations allocated at a time */

enum ep_kind {
	EK_ACCEPT,	 /* single accept */
	EK_ACCEPT_MULTI, /* multishot accept: LOOP_CQE_MORE per connection */
	EK_READ,	 /* read(2) into buf (eventfd, signalfd) */
	EK_RECV_BUF,	 /* recv into buf */
	EK_RECV_POOL,	 /* recv into the next pool buffer, once */
	EK_RECV_MULTI,	 /* multishot recv, one pool buffer per completion */
	EK_RECV_BUNDLE,	 /* multishot recv, consecutive pool buffers per completion */
	EK_SEND,	 /* send of buf */
	EK_SENDMSG,	 /* sendmsg of msg */
	EK_CONNECT,	 /* connect in progress: completes on EPOLLOUT with SO_ERROR */
	EK_TIMEOUT,	 /* standalone timeout: -ETIME */
	EK_LINK_TIMEOUT, /* timeout linked to op->link: -ETIME, and the op -ECANCELED */
	/* Completed when started (never parked): */
	EK_SOCKET,   /* socket(arg[0], arg[1] | SOCK_NONBLOCK, arg[2]) */
	EK_SHUTDOWN, /* shutdown(fd, arg[0]) */
	EK_CLOSE,
	EK_CANCEL,	 /* cancel of the request tagged tag2 */
	EK_CANCEL_CLOSE, /* cancel of everything on fd (tag), then its close (tag2) */
	EK_WRITE,	 /* write(2) of buf (the access log) */
};

/* A pending operation. Parked ones are on their fd's list (timeouts: in the heap instead) and
 * in the tag hash (for loop_cancel). */
struct ep_op {
	uint64_t tag;
	uint8_t kind;
	int fd;
	void *buf;
	unsigned int len;
	const struct msghdr *msg;
	const struct sockaddr *sa; /* connect: the caller's address, read when started */
	int arg[3];
	uint64_t tag2; /* the linked timeout's tag (linked), or see EK_CANCEL* */
	uint32_t ms;   /* linked: the timeout */
	bool linked;
	struct ep_op *snext; /* the submission queue */
	struct ep_op *link;  /* the linked timeout of an op, or the op of a linked timeout */
	struct ep_op *fnext, *fprev; /* the fd's list, oldest first */
	struct ep_op *hnext;	     /* tag hash chain; also the free list */
	uint64_t deadline_ns;
	uint32_t heap_idx;
};

/* Per fd number: its parked operations and what is known of its readiness. */
struct ep_fd {
	struct ep_op *head, *tail;
	uint8_t registered; /* in the epoll set (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET) */
	uint8_t listener;   /* had an accept: deleted from the set before its close (dups) */
	uint8_t nonblock;   /* O_NONBLOCK known to be set */
	uint8_t rd_wait;    /* an EAGAIN (or a short read) since the last readable edge */
	uint8_t wr_wait;    /* an EAGAIN (or a connect in progress) since the last writable edge */
	uint8_t rdhup;	    /* the peer's FIN, a hang-up or an error was seen: read to the end */
	uint8_t retry;	    /* on the retry list (a burst stopped short of EAGAIN) */
};

struct ep_pbuf {
	void *addr;
	uint32_t len;
	uint16_t bid;
};

struct ep_chunk {
	struct ep_chunk *next;
	struct ep_op ops[EP_CHUNK];
};

struct ep_loop {
	struct loop base; /* first: ops and counters */
	int epfd;
	struct ep_fd *fds;
	unsigned int nfds_cap;
	unsigned int nregistered;
	/* Completions: posted to q[qi], handed out by loop_run_once from the other after a swap,
	 * so that what the callbacks post waits for the next iteration. */
	struct loop_cqe *q[2];
	unsigned int qlen[2], qcap[2];
	unsigned int qi;
	/* Tag hash of parked operations. */
	struct ep_op **hash;
	unsigned int hbits, hcount;
	/* Timers: a binary min-heap on deadline_ns. */
	struct ep_op **heap;
	unsigned int heap_len, heap_cap;
	/* fds to try again without a new edge. */
	int *retry;
	unsigned int retry_len, retry_cap;
	struct ep_op *sq_head, *sq_tail; /* queued, not started yet, oldest first */
	struct ep_op *free_ops;
	struct ep_chunk *chunks;
	/* The provided-buffer ring: entries published by loop_pbuf_publish up to tail, taken
	 * from head in ring order (16-bit positions, like the kernel's). */
	struct ep_pbuf *pbuf;
	uint32_t pbuf_mask;
	uint16_t pb_head, pb_tail;
};

static const struct loop_ops epoll_ops;

static inline struct ep_loop *EL(struct loop *l)
{
	return (struct ep_loop *)l;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Memory the loop cannot do without (a completion the caller counts on): waits for it rather
 * than drop a request, like the io_uring backend's backlog. */
static void *xrealloc(void *p, size_t n)
{
	void *q;

	while ((q = realloc(p, n)) == NULL) {
		struct timespec nap = { .tv_sec = 0, .tv_nsec = 1000000 };

		log_error("epoll loop: out of memory; waiting");
		nanosleep(&nap, NULL);
	}
	return q;
}

/* ---- completions ---- */

static void post(struct ep_loop *l, uint64_t tag, int res, uint16_t flags, uint16_t bid)
{
	unsigned int i = l->qi;

	if (l->qlen[i] == l->qcap[i]) {
		l->qcap[i] = l->qcap[i] ? 2 * l->qcap[i] : 256;
		l->q[i] = xrealloc(l->q[i], l->qcap[i] * sizeof(*l->q[i]));
	}
	l->q[i][l->qlen[i]++] =
		(struct loop_cqe){ .tag = tag, .res = res, .flags = flags, .bid = bid };
}

/* ---- operations: allocation, tag hash, fd lists ---- */

static struct ep_op *op_new(struct ep_loop *l, enum ep_kind kind, int fd, uint64_t tag)
{
	struct ep_op *op;

	if (l->free_ops == NULL) {
		struct ep_chunk *c = xrealloc(NULL, sizeof(*c));

		c->next = l->chunks;
		l->chunks = c;
		for (int i = EP_CHUNK - 1; i >= 0; i--) {
			c->ops[i].hnext = l->free_ops;
			l->free_ops = &c->ops[i];
		}
	}
	op = l->free_ops;
	l->free_ops = op->hnext;
	memset(op, 0, sizeof(*op));
	op->kind = (uint8_t)kind;
	op->fd = fd;
	op->tag = tag;
	op->heap_idx = UINT32_MAX;
	l->base.st.submitted++;
	return op;
}

static void op_free(struct ep_loop *l, struct ep_op *op)
{
	op->hnext = l->free_ops;
	l->free_ops = op;
}

static inline unsigned int hslot(const struct ep_loop *l, uint64_t tag)
{
	return (unsigned int)((tag * 0x9e3779b97f4a7c15ull) >> (64 - l->hbits));
}

static void hash_grow(struct ep_loop *l)
{
	unsigned int old = 1u << l->hbits;
	struct ep_op **h = l->hash;

	l->hbits++;
	l->hash = xrealloc(NULL, ((size_t)1 << l->hbits) * sizeof(*l->hash));
	memset(l->hash, 0, ((size_t)1 << l->hbits) * sizeof(*l->hash));
	for (unsigned int i = 0; i < old; i++) {
		while (h[i] != NULL) {
			struct ep_op *op = h[i];
			unsigned int s = hslot(l, op->tag);

			h[i] = op->hnext;
			op->hnext = l->hash[s];
			l->hash[s] = op;
		}
	}
	free(h);
}

static void hash_add(struct ep_loop *l, struct ep_op *op)
{
	unsigned int s;

	if (l->hcount >= (1u << l->hbits))
		hash_grow(l);
	s = hslot(l, op->tag);
	op->hnext = l->hash[s];
	l->hash[s] = op;
	l->hcount++;
}

static void hash_del(struct ep_loop *l, struct ep_op *op)
{
	struct ep_op **pp = &l->hash[hslot(l, op->tag)];

	while (*pp != NULL && *pp != op)
		pp = &(*pp)->hnext;
	if (*pp == op) {
		*pp = op->hnext;
		l->hcount--;
	}
}

static struct ep_op *hash_find(struct ep_loop *l, uint64_t tag)
{
	struct ep_op *op = l->hash[hslot(l, tag)];

	while (op != NULL && op->tag != tag)
		op = op->hnext;
	return op;
}

/* The state of fd number fd (grown as needed: the array may move, so no pointer into it is
 * kept across a call that can create an fd). */
static struct ep_fd *fdst(struct ep_loop *l, int fd)
{
	if ((unsigned int)fd >= l->nfds_cap) {
		unsigned int cap = l->nfds_cap ? l->nfds_cap : 1024;

		while (cap <= (unsigned int)fd)
			cap *= 2;
		/* All-zero is "nothing known yet". */
		l->fds = xrealloc(l->fds, cap * sizeof(*l->fds));
		memset(l->fds + l->nfds_cap, 0, (cap - l->nfds_cap) * sizeof(*l->fds));
		l->nfds_cap = cap;
	}
	return &l->fds[fd];
}

/* A new file got number fd (our accept or socket): whatever was known of the number before
 * (a registration that died with its file) no longer holds. */
static void fd_fresh(struct ep_loop *l, int fd)
{
	struct ep_fd *f = fdst(l, fd);

	if (f->registered)
		l->nregistered--;
	*f = (struct ep_fd){ .nonblock = 1 };
}

static void fd_list_add(struct ep_loop *l, struct ep_op *op)
{
	struct ep_fd *f = fdst(l, op->fd);

	op->fnext = NULL;
	op->fprev = f->tail;
	if (f->tail != NULL)
		f->tail->fnext = op;
	else
		f->head = op;
	f->tail = op;
}

static void fd_list_del(struct ep_loop *l, struct ep_op *op)
{
	struct ep_fd *f = &l->fds[op->fd];

	if (op->fprev != NULL)
		op->fprev->fnext = op->fnext;
	else
		f->head = op->fnext;
	if (op->fnext != NULL)
		op->fnext->fprev = op->fprev;
	else
		f->tail = op->fprev;
	op->fnext = op->fprev = NULL;
}

/* ---- timers ---- */

static bool heap_less(const struct ep_op *a, const struct ep_op *b)
{
	return a->deadline_ns < b->deadline_ns;
}

static void heap_set(struct ep_loop *l, uint32_t i, struct ep_op *op)
{
	l->heap[i] = op;
	op->heap_idx = i;
}

static void heap_up(struct ep_loop *l, uint32_t i)
{
	struct ep_op *op = l->heap[i];

	while (i > 0) {
		uint32_t p = (i - 1) / 2;

		if (!heap_less(op, l->heap[p]))
			break;
		heap_set(l, i, l->heap[p]);
		i = p;
	}
	heap_set(l, i, op);
}

static void heap_down(struct ep_loop *l, uint32_t i)
{
	struct ep_op *op = l->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= l->heap_len)
			break;
		if (c + 1 < l->heap_len && heap_less(l->heap[c + 1], l->heap[c]))
			c++;
		if (!heap_less(l->heap[c], op))
			break;
		heap_set(l, i, l->heap[c]);
		i = c;
	}
	heap_set(l, i, op);
}

static void heap_add(struct ep_loop *l, struct ep_op *op)
{
	if (l->heap_len == l->heap_cap) {
		l->heap_cap = l->heap_cap ? 2 * l->heap_cap : 64;
		l->heap = xrealloc(l->heap, l->heap_cap * sizeof(*l->heap));
	}
	l->heap[l->heap_len] = op;
	op->heap_idx = l->heap_len++;
	heap_up(l, op->heap_idx);
}

static void heap_del(struct ep_loop *l, struct ep_op *op)
{
	uint32_t i = op->heap_idx;
	struct ep_op *last;

	if (i == UINT32_MAX)
		return;
	op->heap_idx = UINT32_MAX;
	last = l->heap[--l->heap_len];
	if (i == l->heap_len)
		return;
	heap_set(l, i, last);
	heap_up(l, i);
	heap_down(l, last->heap_idx);
}

/* ---- ending operations ---- */

/* A linked timeout whose operation completed first: it completes -ECANCELED, as io_uring's. */
static void link_cancel(struct ep_loop *l, struct ep_op *op)
{
	struct ep_op *t = op->link;

	if (t == NULL)
		return;
	op->link = NULL;
	heap_del(l, t);
	hash_del(l, t);
	post(l, t->tag, -ECANCELED, 0, 0);
	op_free(l, t);
}

/* The final completion of a parked fd operation: off its fd and the hash, its linked timeout
 * cancelled, freed. */
static void op_finish(struct ep_loop *l, struct ep_op *op, int res)
{
	fd_list_del(l, op);
	hash_del(l, op);
	post(l, op->tag, res, 0, 0);
	link_cancel(l, op);
	op_free(l, op);
}

/* Ends any pending operation with -ECANCELED (loop_cancel, a close, an expired link). */
static void op_cancel(struct ep_loop *l, struct ep_op *op)
{
	if (op->kind == EK_TIMEOUT || op->kind == EK_LINK_TIMEOUT) {
		heap_del(l, op);
		hash_del(l, op);
		if (op->link != NULL)
			op->link->link = NULL; /* the operation goes on without a deadline */
		post(l, op->tag, -ECANCELED, 0, 0);
		op_free(l, op);
		return;
	}
	op_finish(l, op, -ECANCELED);
}

/* ---- trying an operation ---- */

enum { TRY_DONE, TRY_PARKED };

static void retry_later(struct ep_loop *l, int fd)
{
	struct ep_fd *f = &l->fds[fd];

	if (f->retry)
		return;
	if (l->retry_len == l->retry_cap) {
		l->retry_cap = l->retry_cap ? 2 * l->retry_cap : 64;
		l->retry = xrealloc(l->retry, l->retry_cap * sizeof(*l->retry));
	}
	l->retry[l->retry_len++] = fd;
	f->retry = 1;
}

/* After a read of n bytes into room for want: a short read means the socket's queue is empty
 * (TCP returns what it holds), and with edge-triggered events the next arrival is an edge; that
 * saves the EAGAIN read. Not once the peer's FIN or an error was seen: those arrive without a
 * later edge, so the reads go on until 0 or an error. */
static void after_read(struct ep_fd *f, ssize_t n, size_t want)
{
	if ((size_t)n < want && !f->rdhup)
		f->rd_wait = 1;
}

static uint16_t pbuf_avail(const struct ep_loop *l)
{
	return (uint16_t)(l->pb_tail - l->pb_head);
}

/* One receive into the next pool buffer. TRY_DONE when the operation must end (res posted
 * without MORE), TRY_PARKED when it waits; *took: a completion with data was posted. */
static int recv_pool_once(struct ep_loop *l, struct ep_op *op, struct ep_fd *f, bool multi,
			  bool *took)
{
	struct ep_pbuf *b;
	ssize_t n;

	*took = false;
	if (f->rd_wait)
		return TRY_PARKED;
	if (pbuf_avail(l) == 0) {
		op_finish(l, op, -ENOBUFS);
		return TRY_DONE;
	}
	b = &l->pbuf[l->pb_head & l->pbuf_mask];
	n = recv(op->fd, b->addr, b->len, MSG_DONTWAIT);
	if (n > 0) {
		l->pb_head++;
		after_read(f, n, b->len);
		if (!multi) {
			fd_list_del(l, op);
			hash_del(l, op);
			post(l, op->tag, (int)n, LOOP_CQE_BUFFER, b->bid);
			link_cancel(l, op);
			op_free(l, op);
			return TRY_DONE;
		}
		post(l, op->tag, (int)n, LOOP_CQE_BUFFER | LOOP_CQE_MORE, b->bid);
		*took = true;
		return TRY_PARKED;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		f->rd_wait = 1;
		return TRY_PARKED;
	}
	if (n < 0 && errno == EINTR)
		return TRY_PARKED;
	op_finish(l, op, n == 0 ? 0 : -errno);
	return TRY_DONE;
}

/* One bundle: a readv over up to max consecutive ring entries; one completion naming the first
 * buffer with the byte total (session.c walks the ring entries after it). */
static int recv_bundle_once(struct ep_loop *l, struct ep_op *op, struct ep_fd *f, unsigned int max,
			    unsigned int *used)
{
	struct iovec iov[EP_RECV_BURST];
	struct msghdr m;
	unsigned int k = pbuf_avail(l), i;
	size_t want = 0;
	ssize_t n, left;
	uint16_t first;

	*used = 0;
	if (f->rd_wait)
		return TRY_PARKED;
	if (k == 0) {
		op_finish(l, op, -ENOBUFS);
		return TRY_DONE;
	}
	if (k > max)
		k = max;
	for (i = 0; i < k; i++) {
		struct ep_pbuf *b = &l->pbuf[(uint16_t)(l->pb_head + i) & l->pbuf_mask];

		iov[i].iov_base = b->addr;
		iov[i].iov_len = b->len;
		want += b->len;
	}
	memset(&m, 0, sizeof(m));
	m.msg_iov = iov;
	m.msg_iovlen = k;
	n = recvmsg(op->fd, &m, MSG_DONTWAIT);
	if (n > 0) {
		first = l->pbuf[l->pb_head & l->pbuf_mask].bid;
		for (i = 0, left = n; left > 0; i++)
			left -= (ssize_t)iov[i].iov_len;
		l->pb_head = (uint16_t)(l->pb_head + i);
		*used = i;
		after_read(f, n, want);
		post(l, op->tag, (int)n, LOOP_CQE_BUFFER | LOOP_CQE_MORE, first);
		return TRY_PARKED;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		f->rd_wait = 1;
		return TRY_PARKED;
	}
	if (n < 0 && errno == EINTR)
		return TRY_PARKED;
	op_finish(l, op, n == 0 ? 0 : -errno);
	return TRY_DONE;
}

static int try_recv_multi(struct ep_loop *l, struct ep_op *op, struct ep_fd *f)
{
	unsigned int done = 0;

	while (done < EP_RECV_BURST) {
		bool took;
		unsigned int used;
		int r;

		if (op->kind == EK_RECV_BUNDLE) {
			r = recv_bundle_once(l, op, f, EP_RECV_BURST - done, &used);
			took = used > 0;
			done += used;
		} else {
			r = recv_pool_once(l, op, f, true, &took);
			done++;
		}
		if (r == TRY_DONE)
			return TRY_DONE;
		if (!took)
			return TRY_PARKED;
	}
	/* A full burst without running dry: more may wait, and no edge will say so. */
	if (!f->rd_wait)
		retry_later(l, op->fd);
	return TRY_PARKED;
}

static int try_accept(struct ep_loop *l, struct ep_op *op, struct ep_fd *f)
{
	bool multi = op->kind == EK_ACCEPT_MULTI;

	for (unsigned int i = 0; i < EP_ACCEPT_BURST; i++) {
		int fd;

		if (f->rd_wait)
			return TRY_PARKED;
		fd = accept4(op->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd >= 0) {
			fd_fresh(l, fd);
			f = &l->fds[op->fd]; /* fd_fresh may have moved the array */
			if (!multi) {
				op_finish(l, op, fd);
				return TRY_DONE;
			}
			post(l, op->tag, fd, LOOP_CQE_MORE, 0);
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			f->rd_wait = 1;
			return TRY_PARKED;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		/* EMFILE, ENFILE, ENOMEM...: ends the request, as io_uring's multishot accept. */
		op_finish(l, op, -errno);
		return TRY_DONE;
	}
	retry_later(l, op->fd);
	return TRY_PARKED;
}

/* Completes a single-shot byte operation with n (or parks it on EAGAIN). */
static int byte_result(struct ep_loop *l, struct ep_op *op, ssize_t n, uint8_t *wait)
{
	if (n >= 0) {
		op_finish(l, op, (int)n);
		return TRY_DONE;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK) {
		*wait = 1;
		return TRY_PARKED;
	}
	if (errno == EINTR)
		return TRY_PARKED;
	op_finish(l, op, -errno);
	return TRY_DONE;
}

/* Tries op once (a burst for the multishot kinds). */
static int op_try(struct ep_loop *l, struct ep_op *op)
{
	struct ep_fd *f = &l->fds[op->fd];
	ssize_t n;
	bool took;

	switch (op->kind) {
	case EK_ACCEPT:
	case EK_ACCEPT_MULTI:
		return try_accept(l, op, f);
	case EK_READ:
		if (f->rd_wait)
			return TRY_PARKED;
		n = read(op->fd, op->buf, op->len);
		return byte_result(l, op, n, &f->rd_wait);
	case EK_RECV_BUF:
		if (f->rd_wait)
			return TRY_PARKED;
		n = recv(op->fd, op->buf, op->len, MSG_DONTWAIT);
		if (n > 0)
			after_read(f, n, op->len);
		return byte_result(l, op, n, &f->rd_wait);
	case EK_RECV_POOL:
		return recv_pool_once(l, op, f, false, &took);
	case EK_RECV_MULTI:
	case EK_RECV_BUNDLE:
		return try_recv_multi(l, op, f);
	case EK_SEND:
		if (f->wr_wait)
			return TRY_PARKED;
		n = send(op->fd, op->buf, op->len, MSG_NOSIGNAL | MSG_DONTWAIT);
		return byte_result(l, op, n, &f->wr_wait);
	case EK_SENDMSG:
		if (f->wr_wait)
			return TRY_PARKED;
		n = sendmsg(op->fd, op->msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		return byte_result(l, op, n, &f->wr_wait);
	case EK_CONNECT: {
		int err = 0;
		socklen_t el = sizeof(err);

		if (f->wr_wait)
			return TRY_PARKED;
		if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
			err = errno;
		op_finish(l, op, -err);
		return TRY_DONE;
	}
	default:
		return TRY_PARKED;
	}
}

/* Puts fd in the epoll set (once per file); -errno if it cannot be. */
static int fd_register(struct ep_loop *l, int fd)
{
	struct ep_fd *f = &l->fds[fd];
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
				  .data.fd = fd };

	if (f->registered)
		return 0;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		/* EEXIST: the set still holds this file under this number (a dup of it lives
		 * elsewhere); take it over. */
		if (errno != EEXIST || epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
			return -errno;
	}
	f->registered = 1;
	l->nregistered++;
	return 0;
}

/* An fd the loop did not create (listener, eventfd, signalfd) must not block a read/accept. */
static void fd_nonblock(struct ep_loop *l, int fd)
{
	struct ep_fd *f = fdst(l, fd);
	int fl;

	if (f->nonblock)
		return;
	fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	f->nonblock = 1;
}

/* Queues op: tried at once, parked (on its fd, in the hash, the fd in the epoll set) if it
 * must wait. Returns whether it is still pending. */
static bool op_start(struct ep_loop *l, struct ep_op *op)
{
	int rc;

	fdst(l, op->fd);
	fd_list_add(l, op);
	hash_add(l, op);
	if (op_try(l, op) == TRY_DONE)
		return false;
	rc = fd_register(l, op->fd);
	if (rc < 0) {
		op_finish(l, op, rc);
		return false;
	}
	return true;
}

/* Runs every parked operation of fd, oldest first. */
static void fd_run(struct ep_loop *l, int fd)
{
	struct ep_op *op = l->fds[fd].head;

	while (op != NULL) {
		struct ep_op *next = op->fnext;

		op_try(l, op);
		op = next;
	}
}

/* ---- starting queued operations ---- */

/* Cancels every operation parked on fd; returns how many. */
static int cancel_fd(struct ep_loop *l, int fd)
{
	int n = 0;

	if ((unsigned int)fd >= l->nfds_cap)
		return 0;
	while (l->fds[fd].head != NULL) {
		op_cancel(l, l->fds[fd].head);
		n++;
	}
	return n;
}

static int fd_close(struct ep_loop *l, int fd)
{
	/* Nothing should be parked here (session.c cancels first); if something is, it ends
	 * now rather than on a later file of the same number. */
	cancel_fd(l, fd);
	if ((unsigned int)fd < l->nfds_cap) {
		struct ep_fd *f = &l->fds[fd];

		/* A listener may be a dup (socket activation): its file outlives this close. */
		if (f->registered && f->listener)
			epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
		if (f->registered)
			l->nregistered--;
		*f = (struct ep_fd){ 0 };
	}
	return close(fd) == 0 ? 0 : -errno;
}

/* Starts op, taken off the submission queue. */
static void op_begin(struct ep_loop *l, struct ep_op *op)
{
	struct ep_op *t;
	ssize_t n;
	int rc;

	switch (op->kind) {
	case EK_SOCKET:
		rc = socket(op->arg[0], op->arg[1] | SOCK_NONBLOCK, op->arg[2]);
		if (rc >= 0)
			fd_fresh(l, rc);
		post(l, op->tag, rc >= 0 ? rc : -errno, 0, 0);
		op_free(l, op);
		return;
	case EK_SHUTDOWN:
		post(l, op->tag, shutdown(op->fd, op->arg[0]) == 0 ? 0 : -errno, 0, 0);
		op_free(l, op);
		return;
	case EK_CLOSE:
		post(l, op->tag, fd_close(l, op->fd), 0, 0);
		op_free(l, op);
		return;
	case EK_CANCEL:
		t = hash_find(l, op->tag2);
		if (t != NULL)
			op_cancel(l, t);
		post(l, op->tag, t != NULL ? 0 : -ENOENT, 0, 0);
		op_free(l, op);
		return;
	case EK_CANCEL_CLOSE:
		rc = cancel_fd(l, op->fd);
		post(l, op->tag, rc > 0 ? rc : -ENOENT, 0, 0);
		post(l, op->tag2, fd_close(l, op->fd), 0, 0);
		op_free(l, op);
		return;
	case EK_WRITE:
		/* The access log: a regular file (epoll cannot wait on one) or stdout; one
		 * plain write at the file's position (O_APPEND). */
		do
			n = write(op->fd, op->buf, op->len);
		while (n < 0 && errno == EINTR);
		post(l, op->tag, n >= 0 ? (int)n : -errno, 0, 0);
		op_free(l, op);
		return;
	case EK_TIMEOUT:
		op->deadline_ns = now_ns() + (uint64_t)op->ms * 1000000ull;
		heap_add(l, op);
		hash_add(l, op);
		return;
	case EK_CONNECT:
		rc = connect(op->fd, op->sa, (socklen_t)op->arg[0]);
		if (rc == 0 || (errno != EINPROGRESS && errno != EINTR)) {
			post(l, op->tag, rc == 0 ? 0 : -errno, 0, 0);
			if (op->linked)
				post(l, op->tag2, -ECANCELED, 0, 0);
			op_free(l, op);
			return;
		}
		/* In progress: the connect's own EPOLLOUT (or EPOLLERR) edge is the news. */
		fdst(l, op->fd)->wr_wait = 1;
		break;
	case EK_ACCEPT:
	case EK_ACCEPT_MULTI:
		fd_nonblock(l, op->fd);
		l->fds[op->fd].listener = 1;
		break;
	case EK_READ:
		fd_nonblock(l, op->fd);
		break;
	default:
		break;
	}
	if (op_start(l, op) && op->linked) {
		t = op_new(l, EK_LINK_TIMEOUT, -1, op->tag2);
		t->deadline_ns = now_ns() + (uint64_t)op->ms * 1000000ull;
		heap_add(l, t);
		hash_add(l, t);
		t->link = op;
		op->link = t;
	} else if (op->linked) {
		post(l, op->tag2, -ECANCELED, 0, 0); /* the op completed first */
	}
}

/* Starts every queued operation, in order; those queued meanwhile (none: starting never calls
 * back) would follow. */
static void sq_run(struct ep_loop *l)
{
	while (l->sq_head != NULL) {
		struct ep_op *op = l->sq_head;

		l->sq_head = op->snext;
		if (l->sq_head == NULL)
			l->sq_tail = NULL;
		op_begin(l, op);
	}
}

/* ---- loop_* operations: each queues one request ---- */

static struct ep_op *sq_push(struct loop *lb, enum ep_kind kind, int fd, uint64_t tag)
{
	struct ep_loop *l = EL(lb);
	struct ep_op *op = op_new(l, kind, fd, tag);

	if (l->sq_tail != NULL)
		l->sq_tail->snext = op;
	else
		l->sq_head = op;
	l->sq_tail = op;
	return op;
}

static void e_accept_multishot(struct loop *lb, int fd, uint64_t tag)
{
	sq_push(lb, EK_ACCEPT_MULTI, fd, tag);
}

static void e_accept(struct loop *lb, int fd, uint64_t tag)
{
	sq_push(lb, EK_ACCEPT, fd, tag);
}

static void e_read(struct loop *lb, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct ep_op *op = sq_push(lb, EK_READ, fd, tag);

	op->buf = buf;
	op->len = len;
}

static void e_timeout(struct loop *lb, uint32_t ms, uint64_t tag)
{
	sq_push(lb, EK_TIMEOUT, -1, tag)->ms = ms;
}

static void e_socket(struct loop *lb, int domain, int type, int protocol, uint64_t tag)
{
	struct ep_op *op = sq_push(lb, EK_SOCKET, -1, tag);

	op->arg[0] = domain;
	op->arg[1] = type;
	op->arg[2] = protocol;
}

static struct ep_op *link_to(struct ep_op *op, uint32_t ms, uint64_t ttag)
{
	op->linked = true;
	op->ms = ms;
	op->tag2 = ttag;
	return op;
}

static void e_connect(struct loop *lb, int fd, const struct sockaddr *sa, socklen_t len,
		      uint64_t tag)
{
	struct ep_op *op = sq_push(lb, EK_CONNECT, fd, tag);

	op->sa = sa;
	op->arg[0] = (int)len;
}

static void e_connect_timeout(struct loop *lb, int fd, const struct sockaddr *sa, socklen_t len,
			      uint32_t ms, uint64_t tag, uint64_t ttag)
{
	struct ep_op *op = sq_push(lb, EK_CONNECT, fd, tag);

	op->sa = sa;
	op->arg[0] = (int)len;
	link_to(op, ms, ttag);
	EL(lb)->base.st.submitted++; /* the timeout: a request of its own, as with io_uring */
}

static void e_recv_multishot(struct loop *lb, int fd, uint16_t bgid, uint64_t tag)
{
	sq_push(lb, EK_RECV_MULTI, fd, tag);
}

static bool e_has_recv_bundle(const struct loop *lb)
{
	(void)lb;
	return true;
}

static void e_recv_bundle(struct loop *lb, int fd, uint16_t bgid, uint64_t tag)
{
	sq_push(lb, EK_RECV_BUNDLE, fd, tag);
}

static void e_recv(struct loop *lb, int fd, uint16_t bgid, uint64_t tag)
{
	sq_push(lb, EK_RECV_POOL, fd, tag);
}

static struct ep_op *buf_op(struct loop *lb, enum ep_kind kind, int fd, const void *buf,
			    unsigned int len, uint64_t tag)
{
	struct ep_op *op = sq_push(lb, kind, fd, tag);

	op->buf = (void *)buf;
	op->len = len;
	return op;
}

static void e_send(struct loop *lb, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	buf_op(lb, EK_SEND, fd, buf, len, tag);
}

static void e_recv_buf(struct loop *lb, int fd, void *buf, unsigned int len, uint64_t tag)
{
	buf_op(lb, EK_RECV_BUF, fd, buf, len, tag);
}

static void e_recv_buf_timeout(struct loop *lb, int fd, void *buf, unsigned int len, uint32_t ms,
			       uint64_t tag, uint64_t ttag)
{
	link_to(buf_op(lb, EK_RECV_BUF, fd, buf, len, tag), ms, ttag);
	EL(lb)->base.st.submitted++;
}

static void e_send_timeout(struct loop *lb, int fd, const void *buf, unsigned int len, uint32_t ms,
			   uint64_t tag, uint64_t ttag)
{
	link_to(buf_op(lb, EK_SEND, fd, buf, len, tag), ms, ttag);
	EL(lb)->base.st.submitted++;
}

static void e_write(struct loop *lb, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	buf_op(lb, EK_WRITE, fd, buf, len, tag);
}

static void e_sendmsg(struct loop *lb, int fd, const struct msghdr *msg, uint64_t tag)
{
	sq_push(lb, EK_SENDMSG, fd, tag)->msg = msg;
}

static void e_shutdown(struct loop *lb, int fd, int how, uint64_t tag)
{
	sq_push(lb, EK_SHUTDOWN, fd, tag)->arg[0] = how;
}

static void e_close(struct loop *lb, int fd, uint64_t tag)
{
	sq_push(lb, EK_CLOSE, fd, tag);
}

static void e_cancel(struct loop *lb, uint64_t target, uint64_t tag)
{
	sq_push(lb, EK_CANCEL, -1, tag)->tag2 = target;
}

static void e_cancel_fd_then_close(struct loop *lb, int fd, uint64_t cancel_tag, uint64_t close_tag)
{
	sq_push(lb, EK_CANCEL_CLOSE, fd, cancel_tag)->tag2 = close_tag;
	EL(lb)->base.st.submitted++; /* the close */
}

/* ---- the provided-buffer ring ---- */

static int e_pbuf_register(struct loop *lb, uint16_t bgid, uint32_t entries, char *why,
			   size_t whylen)
{
	struct ep_loop *l = EL(lb);

	(void)bgid;
	l->pbuf = calloc(entries, sizeof(*l->pbuf));
	if (l->pbuf == NULL) {
		snprintf(why, whylen, "cannot allocate the buffer ring: out of memory");
		return -ENOMEM;
	}
	l->pbuf_mask = entries - 1;
	return 0;
}

static void e_pbuf_add(struct loop *lb, void *addr, uint32_t len, uint16_t bid, int offset)
{
	struct ep_loop *l = EL(lb);
	struct ep_pbuf *b = &l->pbuf[(uint16_t)(l->pb_tail + offset) & l->pbuf_mask];

	b->addr = addr;
	b->len = len;
	b->bid = bid;
}

static void e_pbuf_publish(struct loop *lb, int count)
{
	struct ep_loop *l = EL(lb);

	l->pb_tail = (uint16_t)(l->pb_tail + count);
}

/* ---- the wait ---- */

static void expire_timers(struct ep_loop *l)
{
	uint64_t now = now_ns();

	while (l->heap_len > 0 && l->heap[0]->deadline_ns <= now) {
		struct ep_op *t = l->heap[0];

		heap_del(l, t);
		hash_del(l, t);
		if (t->kind == EK_LINK_TIMEOUT && t->link != NULL) {
			struct ep_op *op = t->link;

			/* The operation fails -ECANCELED, the timeout completes -ETIME. */
			op->link = NULL;
			op_finish(l, op, -ECANCELED);
		}
		post(l, t->tag, -ETIME, 0, 0);
		op_free(l, t);
	}
}

static int e_run_once(struct loop *lb, loop_cqe_fn fn, void *ctx, int64_t timeout_ms)
{
	struct ep_loop *l = EL(lb);
	struct epoll_event evs[EP_EVENTS];
	unsigned int qi, n;
	int wait, nev;

	/* What the last callbacks queued goes first, as io_uring submits before it waits. */
	sq_run(l);
	if (l->qlen[l->qi] > 0 || l->retry_len > 0) {
		wait = 0; /* completions wait already, or a burst was cut short */
	} else {
		wait = timeout_ms < 0 ? -1 : timeout_ms > INT_MAX ? INT_MAX : (int)timeout_ms;
		if (l->heap_len > 0) {
			uint64_t now = now_ns(), d = l->heap[0]->deadline_ns;
			/* Rounded up: waking a little late beats a spin of early wake-ups. */
			int64_t ms = d > now ? (int64_t)((d - now + 999999) / 1000000) : 0;

			if (wait < 0 || ms < wait)
				wait = (int)(ms > INT_MAX ? INT_MAX : ms);
		}
	}
	nev = epoll_wait(l->epfd, evs, EP_EVENTS, wait);
	l->base.st.enters++;
	if (nev < 0) {
		if (errno != EINTR)
			return -errno;
		l->base.st.enter_retries++;
		nev = 0;
	}
	for (int i = 0; i < nev; i++) {
		int fd = evs[i].data.fd;
		uint32_t e = evs[i].events;
		struct ep_fd *f;

		if ((unsigned int)fd >= l->nfds_cap)
			continue;
		f = &l->fds[fd];
		if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			f->rd_wait = 0;
		if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
			f->wr_wait = 0;
		if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			f->rdhup = 1;
		fd_run(l, fd);
	}
	if (l->retry_len > 0) {
		/* Those cut short before this iteration; a new cut goes on the list again. */
		unsigned int nr = l->retry_len;
		int *list = xrealloc(NULL, nr * sizeof(*list));

		memcpy(list, l->retry, nr * sizeof(*list));
		l->retry_len = 0;
		for (unsigned int i = 0; i < nr; i++) {
			l->fds[list[i]].retry = 0;
			fd_run(l, list[i]);
		}
		free(list);
	}
	expire_timers(l);
	/* Hand out what is queued now; what the callbacks post goes to the other queue. */
	qi = l->qi;
	n = l->qlen[qi];
	l->qi ^= 1;
	for (unsigned int i = 0; i < n; i++) {
		struct loop_cqe c = l->q[qi][i];

		fn(ctx, &c);
	}
	l->qlen[qi] = 0;
	l->base.st.cqes += n;
	return (int)n;
}

/* ---- set-up ---- */

static int e_probe(struct loop *lb, char *why, size_t whylen)
{
	(void)lb;
	(void)why;
	(void)whylen;
	return 0;
}

static void e_describe(const struct loop *lb, char *buf, size_t len)
{
	const struct ep_loop *l = (const struct ep_loop *)lb;

	snprintf(buf, len, "epoll fds=%u", l->nregistered);
}

static void e_free(struct loop *lb)
{
	struct ep_loop *l = EL(lb);

	/* Pending operations end here without completions; nothing reads a buffer later. */
	if (l->epfd >= 0)
		close(l->epfd);
	while (l->chunks != NULL) {
		struct ep_chunk *c = l->chunks;

		l->chunks = c->next;
		free(c);
	}
	free(l->fds);
	free(l->q[0]);
	free(l->q[1]);
	free(l->hash);
	free(l->heap);
	free(l->retry);
	free(l->pbuf);
	free(l);
}

int loop_epoll_new(unsigned int sq_entries, unsigned int cq_entries, struct loop **out, char *why,
		   size_t whylen)
{
	struct ep_loop *l = calloc(1, sizeof(*l));

	(void)sq_entries;
	(void)cq_entries;
	if (l == NULL) {
		snprintf(why, whylen, "cannot set up epoll: out of memory");
		return -ENOMEM;
	}
	l->base.ops = &epoll_ops;
	l->base.st.backend = "epoll";
	{
		/* Sized for every fd number the process may have (main raised the limit before
		 * the workers start): the array then never moves. Pages are touched as used. */
		struct rlimit rl;

		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 0 &&
		    rl.rlim_cur < (1u << 22)) {
			l->fds = calloc(rl.rlim_cur, sizeof(*l->fds)); /* pages untouched */
			l->nfds_cap = l->fds != NULL ? (unsigned int)rl.rlim_cur : 0;
		}
	}
	l->hbits = 10;
	l->hash = calloc((size_t)1 << l->hbits, sizeof(*l->hash));
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->hash == NULL || l->epfd < 0) {
		int err = l->epfd < 0 ? errno : ENOMEM;

		snprintf(why, whylen, "cannot set up epoll: %s", strerror(err));
		e_free(&l->base);
		return -err;
	}
	*out = &l->base;
	return 0;
}

static const struct loop_ops epoll_ops = {
	.name = "epoll",
	.free = e_free,
	.describe = e_describe,
	.probe = e_probe,
	.run_once = e_run_once,
	.fault_session_start = NULL,
	.pbuf_register = e_pbuf_register,
	.pbuf_add = e_pbuf_add,
	.pbuf_publish = e_pbuf_publish,
	.accept_multishot = e_accept_multishot,
	.accept = e_accept,
	.read = e_read,
	.timeout = e_timeout,
	.socket = e_socket,
	.connect = e_connect,
	.connect_timeout = e_connect_timeout,
	.recv_multishot = e_recv_multishot,
	.has_recv_bundle = e_has_recv_bundle,
	.recv_bundle = e_recv_bundle,
	.recv = e_recv,
	.send = e_send,
	.recv_buf = e_recv_buf,
	.recv_buf_timeout = e_recv_buf_timeout,
	.send_timeout = e_send_timeout,
	.write = e_write,
	.sendmsg = e_sendmsg,
	.shutdown = e_shutdown,
	.close = e_close,
	.cancel = e_cancel,
	.cancel_fd_then_close = e_cancel_fd_then_close,
};
